"""API and feed: `GET /bots/{botId}/status` under 50 concurrent clients, and the WebSocket feed.

The API runs as its own process (`xbot api`), the worker as another. Status latency is measured by
50 concurrent loopback clients for 30 s. The feed is measured with 1 and then 100 WebSocket clients
on one bot whose task runs every second: Temporal `QueryWorkflow` calls per second (from the dev
server's own Prometheus counters) and event delivery delay (arrival - the event's workflow time).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import time
import uuid
from datetime import datetime
from typing import Any

import httpx
import psutil

from bench.baselines import BotPlan
from bench.env import BenchEnv, BenchError, ManagedProcess, free_port, spawn
from bench.report import Result, goal
from bench.scenarios import PROJECT_MODULES, RunContext, missing_module
from bench.scenarios.common import insert_project_bots, start_project_bots
from bench.stats import latency_summary_ms, ratio
from xbot.db import create_pool

NAME = "api_feed"
DESCRIPTION = (
    "`GET /bots/{botId}/status` (a database read, a describe and a `status` query per call) from 50 "
    "concurrent loopback clients over 10 bots; then the WebSocket feed of one bot whose task runs every "
    "second, with 1 and with 100 clients: Temporal `QueryWorkflow` calls per second (dev server "
    "counters) and event delivery delay (client arrival - the event's workflow timestamp)."
)
GOAL_STATUS_P99_MS = 50.0
STATUS_CLIENTS = 50
FEED_CLIENTS = 100
STATUS_BOTS = 10


def durations(quick: bool) -> tuple[float, float]:
    """(status load seconds, seconds per feed phase)."""
    return (2.0, 3.0) if quick else (30.0, 20.0)


def estimate_seconds(quick: bool) -> float:
    status_seconds, feed_seconds = durations(quick)
    return 25 + status_seconds + 2 * feed_seconds


async def _start_api(
    env: BenchEnv, task_queue: str, database_url: str, token: str
) -> tuple[ManagedProcess, str]:
    port = free_port()
    environment = env.worker_env(task_queue, database_url)
    environment["API_TOKEN"] = token
    argv = [sys.executable, "-m", "xbot.cli", "api", "--host", "127.0.0.1", "--port", str(port)]
    api = spawn("api", argv, environment, env.workdir / "api.log", profiled=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            if not api.alive():
                raise BenchError(f"API exited with {api.popen.returncode}:\n{api.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}/healthz")).status_code == 200:
                    return api, url
            await asyncio.sleep(0.3)
    api.stop()
    raise BenchError(f"API not healthy at {url} within 60 s:\n{api.log_tail()}")


def _own_cpu() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


async def _status_load(url: str, token: str, bot_ids: list[str], seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=STATUS_CLIENTS, max_keepalive_connections=STATUS_CLIENTS)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as http:

        async def client(index: int) -> None:
            nonlocal errors
            request = 0
            while time.monotonic() < deadline:
                bot_id = bot_ids[(index + request) % len(bot_ids)]
                request += 1
                began = time.perf_counter()
                try:
                    response = await http.get(f"/bots/{bot_id}/status")
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - began)
                else:
                    errors += 1

        await asyncio.gather(*(client(index) for index in range(STATUS_CLIENTS)))
    figures: dict[str, Any] = latency_summary_ms(latencies)
    figures["requests_per_second"] = round(len(latencies) / seconds, 1)
    figures["errors"] = errors
    return figures


async def _feed_clients(url: str, token: str, bot_id: str, clients: int, seconds: float) -> list[float]:
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


async def _query_rate(env: BenchEnv, feed: Any, seconds: float) -> tuple[float, list[float]]:
    """QueryWorkflow calls per second reaching the server while `feed` runs, and the feed's delays."""
    await asyncio.sleep(METRICS_SETTLE_SECONDS)
    before = await env.server_metric("service_requests", *QUERY_LABELS)
    delays: list[float] = await feed
    await asyncio.sleep(METRICS_SETTLE_SECONDS)  # no client is connected now: no more polls
    after = await env.server_metric("service_requests", *QUERY_LABELS)
    return round((after - before) / seconds, 2), delays


async def run(ctx: RunContext, result: Result) -> None:
    result["description"] = DESCRIPTION
    missing = missing_module("api.app", *PROJECT_MODULES)
    if missing is not None:
        result["notes"].append(f"not available yet ({missing} is missing); not run")
        return
    status_seconds, feed_seconds = durations(ctx.quick)
    result["config"] = {
        "status_clients": STATUS_CLIENTS,
        "status_seconds": status_seconds,
        "feed_clients": FEED_CLIENTS,
        "feed_seconds": feed_seconds,
    }
    token = secrets.token_urlsafe(24)
    async with BenchEnv(ctx.postgres, ctx.workdir, NAME) as env:
        database_url = await ctx.postgres.new_database()
        pool = await create_pool(database_url, min_size=1, max_size=4)
        api: ManagedProcess | None = None
        try:
            task_queue = f"bench-{uuid.uuid4().hex[:8]}"
            ctx.progress.set_phase(f"{NAME}: starting worker, API and bots", 15)
            worker = await env.start_project_worker(task_queue, database_url)
            api, url = await _start_api(env, task_queue, database_url, token)
            soon = time.time() + 3
            status_bots = [BotPlan(f"status-{index:02d}", soon + index) for index in range(STATUS_BOTS)]
            feed_bot = BotPlan("feed-00", soon)
            await insert_project_bots(pool, status_bots, 10, "noop", {})
            await insert_project_bots(pool, [feed_bot], 1, "noop", {})
            await start_project_bots(env, task_queue, [plan.bot_id for plan in [*status_bots, feed_bot]])
            await asyncio.sleep(2 if ctx.quick else 4)  # first rounds done

            ctx.progress.set_phase(f"{NAME}: {STATUS_CLIENTS} clients on GET /status", status_seconds)
            processes = {"api": api, "worker": worker, "temporal": env.temporal}
            cpu_before = {name: process.cpu_seconds() for name, process in processes.items() if process}
            bench_before = _own_cpu()
            status = await _status_load(url, token, [plan.bot_id for plan in status_bots], status_seconds)
            # Which process the 50 clients saturate: CPU seconds per second of load, per process.
            status["cpu_cores_used"] = {
                name: round((process.cpu_seconds() - cpu_before[name]) / status_seconds, 2)
                for name, process in processes.items()
                if process
            } | {"load generator": round((_own_cpu() - bench_before) / status_seconds, 2)}
            ctx.progress.set_phase(f"{NAME}: feed with 1 client", feed_seconds)
            one_rate, one_delays = await _query_rate(
                env, _feed_clients(url, token, feed_bot.bot_id, 1, feed_seconds), feed_seconds
            )
            ctx.progress.set_phase(f"{NAME}: feed with {FEED_CLIENTS} clients", feed_seconds)
            many_rate, many_delays = await _query_rate(
                env, _feed_clients(url, token, feed_bot.bot_id, FEED_CLIENTS, feed_seconds), feed_seconds
            )
        finally:
            if api is not None:
                api.stop()
            await pool.close()

    one, many = latency_summary_ms(one_delays), latency_summary_ms(many_delays)
    result["systems"] = {
        "project": {
            "status": status,
            "feed_1_client": {"queries_per_second": one_rate, "delivery_delay": one},
            f"feed_{FEED_CLIENTS}_clients": {"queries_per_second": many_rate, "delivery_delay": many},
        }
    }
    result["table"] = {
        "columns": ["what", "count", "p50 ms", "p95 ms", "p99 ms", "max ms", "per second"],
        "rows": [
            [
                f"GET /status, {STATUS_CLIENTS} clients",
                status["count"],
                status["p50_ms"],
                status["p95_ms"],
                status["p99_ms"],
                status["max_ms"],
                status["requests_per_second"],
            ],
            [
                "feed, 1 client: event delay / queries",
                one["count"],
                one["p50_ms"],
                one["p95_ms"],
                one["p99_ms"],
                one["max_ms"],
                one_rate,
            ],
            [
                f"feed, {FEED_CLIENTS} clients: event delay / queries",
                many["count"],
                many["p50_ms"],
                many["p95_ms"],
                many["p99_ms"],
                many["max_ms"],
                many_rate,
            ],
        ],
    }
    query_ratio = ratio(many_rate, one_rate)
    result["ratios"] = {f"Temporal queries/s, {FEED_CLIENTS} clients / 1 client": query_ratio}
    result["goals"] += [
        goal(
            "GET /status p99",
            f"< {GOAL_STATUS_P99_MS:.0f} ms",
            status["p99_ms"],
            status["count"] > 0 and status["p99_ms"] < GOAL_STATUS_P99_MS,
        ),
        goal(
            "Temporal queries independent of feed clients",
            "100 clients / 1 client <= 1.1",
            query_ratio,
            None if query_ratio is None else query_ratio <= 1.1,
        ),
    ]
    result["notes"].append(
        "CPU cores busy during the status load: "
        + ", ".join(f"{name} {cores}" for name, cores in status["cpu_cores_used"].items())
    )
    if status["errors"]:
        result["notes"].append(f"GET /status: {status['errors']} failed requests")
    result["notes"].append(
        "the load generator (httpx, websockets) runs in the benchmark process on the same 2 cores as "
        "the API, the worker and Temporal, so it takes CPU from what it measures"
    )
