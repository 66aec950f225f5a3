"""The load generators of the API and feed scenario: HTTP clients on `GET /bots/{botId}/status`,
`GET /bots` and start/stop, the workflow's `status` query for reference, and the WebSocket feed
clients with the Temporal queries they cause."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

import aiohttp
import httpx

from bench.env import BenchEnv
from bench.stats import latency_summary_ms

STATUS_CLIENTS = 50
FLEET_POLL_SECONDS = 10.0
LIST_LIMIT = 100
LIST_CLIENTS = 4


def _session(url: str, token: str, connections: int) -> aiohttp.ClientSession:
    """The load generator's HTTP client: aiohttp (C parser, keep-alive), so the clients cost the
    shared 2 cores far less than httpx did and the figures are the API's, not the generator's."""
    return aiohttp.ClientSession(
        base_url=url,
        headers={"Authorization": f"Bearer {token}"},
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=30),
    )


async def _get_ok(http: aiohttp.ClientSession, path: str) -> bool:
    try:
        async with http.get(path) as response:
            await response.read()
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def status_load(url: str, token: str, bot_ids: list[str], seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    async with _session(url, token, STATUS_CLIENTS) as http:

        async def client(index: int) -> None:
            nonlocal errors
            request = 0
            while time.monotonic() < deadline:
                bot_id = bot_ids[(index + request) % len(bot_ids)]
                request += 1
                began = time.perf_counter()
                if await _get_ok(http, f"/bots/{bot_id}/status"):
                    latencies.append(time.perf_counter() - began)
                else:
                    errors += 1

        await asyncio.gather(*(client(index) for index in range(STATUS_CLIENTS)))
    figures: dict[str, Any] = latency_summary_ms(latencies)
    figures["requests_per_second"] = round(len(latencies) / seconds, 1)
    figures["errors"] = errors
    return figures


async def query_load(env: BenchEnv, bot_id: str, seconds: float) -> dict[str, Any]:
    """The workflow's `status` query from 50 concurrent callers: the old per-call cost, for reference."""
    from xbot import bot_control

    client = await env.project_client()
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def caller() -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            began = time.perf_counter()
            try:
                await bot_control.query_status(client, bot_id, timeout=None)
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - began)

    await asyncio.gather(*(caller() for _ in range(STATUS_CLIENTS)))
    figures: dict[str, Any] = latency_summary_ms(latencies)
    figures["requests_per_second"] = round(len(latencies) / seconds, 1)
    figures["errors"] = errors
    return figures


async def fleet_load(url: str, token: str, bot_ids: list[str], seconds: float) -> dict[str, Any]:
    """One client per bot, each polling its bot's status once every FLEET_POLL_SECONDS (open loop)."""
    latencies: list[float] = []
    errors = 0
    began_at = time.monotonic()
    deadline = began_at + seconds
    async with _session(url, token, 256) as http:

        async def client(index: int) -> None:
            nonlocal errors
            tick = began_at + FLEET_POLL_SECONDS * index / len(bot_ids)  # spread evenly
            while tick < deadline:
                await asyncio.sleep(max(0.0, tick - time.monotonic()))
                began = time.perf_counter()
                if await _get_ok(http, f"/bots/{bot_ids[index]}/status"):
                    latencies.append(time.perf_counter() - began)
                else:
                    errors += 1
                tick += FLEET_POLL_SECONDS

        await asyncio.gather(*(client(index) for index in range(len(bot_ids))))
    figures: dict[str, Any] = latency_summary_ms(latencies)
    figures["requests_per_second"] = round(len(latencies) / seconds, 1)
    figures["errors"] = errors
    return figures


async def list_load(url: str, token: str) -> dict[str, Any]:
    """LIST_CLIENTS clients each walking every page of `GET /bots?limit=100` by its cursor."""
    latencies: list[float] = []
    errors = 0
    pages = 0
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:

        async def walker() -> None:
            nonlocal errors, pages
            cursor: str | None = None
            while True:
                params: dict[str, Any] = {"limit": LIST_LIMIT} | ({"cursor": cursor} if cursor else {})
                began = time.perf_counter()
                response = await http.get("/bots", params=params)
                if response.status_code != 200:
                    errors += 1
                    return
                latencies.append(time.perf_counter() - began)
                pages += 1
                cursor = response.headers.get("X-Next-Cursor")
                if cursor is None:
                    return

        await asyncio.gather(*(walker() for _ in range(LIST_CLIENTS)))
    figures: dict[str, Any] = latency_summary_ms(latencies)
    figures["pages"] = pages
    figures["errors"] = errors
    return figures


async def control_load(url: str, token: str, bot_ids: list[str], cycles: int) -> dict[str, Any]:
    """Each bot started and stopped `cycles` times, all bots at once; every POST's round trip."""
    starts: list[float] = []
    stops: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:

        async def cycle(bot_id: str) -> None:
            nonlocal errors
            for _ in range(cycles):
                for action, into in (("start", starts), ("stop", stops)):
                    began = time.perf_counter()
                    response = await http.post(f"/bots/{bot_id}/{action}")
                    if response.status_code == 200:
                        into.append(time.perf_counter() - began)
                    else:
                        errors += 1

        await asyncio.gather(*(cycle(bot_id) for bot_id in bot_ids))
    figures: dict[str, Any] = latency_summary_ms(starts + stops)
    figures["start"] = latency_summary_ms(starts)
    figures["stop"] = latency_summary_ms(stops)
    figures["errors"] = errors
    return figures


async def feed_clients(url: str, token: str, bot_id: str, clients: int, seconds: float) -> list[float]:
    """Delays of every workflow event received by every client during `seconds`."""
    from websockets.asyncio.client import connect

    delays: list[float] = []
    ws_url = url.replace("http://", "ws://") + f"/bots/{bot_id}/ws?token={token}"
    deadline = time.monotonic() + seconds

    async def client() -> None:
        async with connect(ws_url, open_timeout=30, max_size=2**20) as websocket:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    message = await asyncio.wait_for(websocket.recv(), left)
                except TimeoutError:
                    return
                arrived = time.time()
                event = json.loads(message)
                if "seq" in event and isinstance(event.get("timestamp"), str):
                    stamp = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
                    delays.append(arrived - stamp)

    await asyncio.gather(*(client() for _ in range(clients)))
    return delays


QUERY_LABELS = ('operation="QueryWorkflow"', 'service_name="frontend"')
METRICS_SETTLE_SECONDS = 1.5  # the server's counters are published about once a second


async def query_rate(env: BenchEnv, feed: Any, seconds: float) -> tuple[float, list[float]]:
    """QueryWorkflow calls per second reaching the server while `feed` runs, and the feed's delays."""
    await asyncio.sleep(METRICS_SETTLE_SECONDS)
    before = await env.server_metric("service_requests", *QUERY_LABELS)
    delays: list[float] = await feed
    await asyncio.sleep(METRICS_SETTLE_SECONDS)  # no client is connected now: no more polls
    after = await env.server_metric("service_requests", *QUERY_LABELS)
    return round((after - before) / seconds, 2), delays
