"""A minimal HTTP/1.1 receiver on 127.0.0.1 for webhook tasks: records when each POST arrived.

Plain asyncio streams rather than a web framework, so that the receiver adds as little CPU and
delay as possible to what is measured. Keep-alive is supported because httpx reuses connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
_BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Arrival:
    at: float  # time.time() when the body was read
    body: dict[str, Any]


@dataclass
class WebhookReceiver:
    host: str = "127.0.0.1"
    port: int = 0
    # Answer this long after the body arrived: the webhook handler is in flight meanwhile (crash_recovery).
    hold_seconds: float = 0.0
    arrivals: list[Arrival] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _connections: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    async def start(self) -> WebhookReceiver:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            # Held answers would outlive the server (and be cancelled noisily at the loop's end).
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if length > MAX_BODY_BYTES:
                    writer.write(_BAD)
                    await writer.drain()
                    return
                body = await reader.readexactly(length) if length else b"{}"
                arrived = time.time()
                with contextlib.suppress(ValueError):
                    parsed = json.loads(body)
                    if isinstance(parsed, dict):
                        self.arrivals.append(Arrival(arrived, parsed))
                if self.hold_seconds:
                    await asyncio.sleep(self.hold_seconds)
                writer.write(_RESPONSE)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        except asyncio.CancelledError:
            pass  # `stop`: this connection task ends here, quietly
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
