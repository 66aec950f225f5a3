"""Real servers on 127.0.0.1 inside the test's event loop: any ASGI app, and the fakes of X, an
OpenAI-compatible LLM and Discord (tests/fakes) side by side."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import uvicorn


class Uvicorn:
    """`app` served by uvicorn on a free port of 127.0.0.1, started and stopped on demand."""

    def __init__(self, app: Any, *, force_exit: bool = False) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        # Leave the test runner's signal handlers (Ctrl-C) alone.
        self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        # Stop without waiting for open requests (a fake's "hang" fault leaves some).
        self.force_exit = force_exit
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        """Serve; returns `127.0.0.1:<port>` once the server listens."""
        self.task = asyncio.create_task(self.server.serve())
        for _ in range(1000):
            if self.server.started or self.task.done():
                break
            await asyncio.sleep(0.01)
        if not self.server.started:
            if self.task.done():
                self.task.result()  # raises why it did not start
            self.task.cancel()
            raise RuntimeError("uvicorn did not start")
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def stop(self, timeout: float | None = 10.0) -> None:
        """Stop; with `force_exit`, within `timeout` seconds."""
        assert self.task is not None
        self.server.should_exit = True
        self.server.force_exit = self.force_exit
        await asyncio.wait_for(self.task, timeout=timeout if self.force_exit else None)


@asynccontextmanager
async def serve_address(app: Any) -> AsyncIterator[str]:
    """Serve `app` (the API: open requests finish first); yields `127.0.0.1:<port>`."""
    server = Uvicorn(app)
    address = await server.start()
    try:
        yield address
    finally:
        await server.stop()


@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """A fake's app served; yields its base URL (`http://127.0.0.1:<port>`)."""
    server = Uvicorn(app, force_exit=True)
    address = await server.start()
    try:
        yield f"http://{address}"
    finally:
        await server.stop()


class Fake(Protocol):
    def app(self) -> Any: ...


@dataclass
class FakeUrls:
    x: str
    llm: str
    discord: str


# Fakes still stopping: a uvicorn server takes ~0.2 s to notice it should stop, which the next test
# need not wait for. `finish_stopping` waits for them (and reports their errors) at the session's end.
_stopping: list[asyncio.Task[None]] = []


@asynccontextmanager
async def serve_fakes(x: Fake, llm: Fake, discord: Fake) -> AsyncIterator[FakeUrls]:
    """The fake X API, LLM and Discord, each on its own port; yields their base URLs.

    Started together; stopped in the background once the test is done with them."""
    servers = [Uvicorn(fake.app(), force_exit=True) for fake in (x, llm, discord)]
    try:
        x_address, llm_address, discord_address = await asyncio.gather(*(s.start() for s in servers))
        yield FakeUrls(f"http://{x_address}", f"http://{llm_address}", f"http://{discord_address}")
    finally:
        # No timeout: the loop's clock runs on while it sits idle between tests, which a background
        # stop would count against itself (a force-exiting server stops within ~0.2 s of loop time).
        _stopping.extend(asyncio.ensure_future(s.stop(timeout=None)) for s in servers if s.task is not None)


async def finish_stopping() -> None:
    stopping = list(_stopping)
    _stopping.clear()
    await asyncio.gather(*stopping)
