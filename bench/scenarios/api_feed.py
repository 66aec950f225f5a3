"""API and feed: status, list and control at scale, and the WebSocket feed.

The API runs as its own process (`xbot api`), the worker as another. Measured, side by side:
- `GET /bots/{botId}/status` from 50 concurrent loopback clients on one bot (closed loop), and the
  workflow's `status` query under the same load (what every status call cost before issue 12);
- `GET /bots/{botId}/status` with 1,000 running bots and 1 client each, each polling its bot once every
  10 s, evenly spread (open loop, ~100 requests/s: a dashboard per bot);
- `GET /bots?limit=100` walked page by page over 10,000 bots (1,000+ with running workflows, the rest
  rows only: starting 10k workflows here takes minutes and says nothing more about one list call);
- `POST /start` and `POST /stop` round trips (Workflow Updates), 10 bots at once;
- the feed with 1 and then 100 WebSocket clients on one bot whose task runs every second: Temporal
  `QueryWorkflow` calls per second (the dev server's Prometheus counters) and event delivery delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
import uuid
from typing import Any

import httpx
import psutil

from bench.baselines import BotPlan
from bench.env import BenchEnv, BenchError, ManagedProcess, free_port, spawn
from bench.report import Result, goal
from bench.scenarios import PROJECT_MODULES, RunContext, missing_module
from bench.scenarios.api_feed_load import (
    FLEET_POLL_SECONDS,
    LIST_CLIENTS,
    LIST_LIMIT,
    STATUS_CLIENTS,
    control_load,
    feed_clients,
    fleet_load,
    list_load,
    query_load,
    query_rate,
    status_load,
)
from bench.scenarios.common import insert_project_bots, start_project_bots
from bench.stats import latency_summary_ms, ratio
from xbot.storage import bots as bots_table
from xbot.storage.pool import create_pool

NAME = "api_feed"
DESCRIPTION = (
    "`GET /bots/{botId}/status` (a describe and a database read, coalesced per bot; no query) from 50 "
    "concurrent loopback clients on one bot, beside the workflow's `status` query under the same load; "
    "status with 1,000 running bots polled once every 10 s each; `GET /bots?limit=100` over 10,000 bots; "
    "start/stop round trips (Workflow Updates); then the WebSocket feed of one bot whose task runs every "
    "second, with 1 and with 100 clients: Temporal `QueryWorkflow` calls per second (dev server "
    "counters) and event delivery delay (client arrival - the event's workflow timestamp)."
)
GOAL_STATUS_P99_MS = 50.0
GOAL_LIST_P99_MS = 200.0
GOAL_CONTROL_P99_MS = 500.0
FEED_CLIENTS = 100
CONTROL_BOTS = 10
FAR_SECONDS = 30 * 86400


def sizes(quick: bool) -> dict[str, int]:
    """Bots with running workflows for the fleet row, bot rows for the list row, start/stop cycles."""
    if quick:
        return {"fleet_bots": 100, "list_bots": 1000, "control_cycles": 2}
    return {"fleet_bots": 1000, "list_bots": 10_000, "control_cycles": 5}


def durations(quick: bool) -> tuple[float, float]:
    """(seconds per status load, seconds per feed phase)."""
    return (2.0, 3.0) if quick else (30.0, 20.0)


def estimate_seconds(quick: bool) -> float:
    status_seconds, feed_seconds = durations(quick)
    fleet_start = sizes(quick)["fleet_bots"] / 15  # start calls and first plan loads
    return 40 + fleet_start + 3 * status_seconds + FLEET_POLL_SECONDS + 2 * feed_seconds


async def _start_api(
    env: BenchEnv, task_queue: str, database_url: str, token: str
) -> tuple[ManagedProcess, str]:
    port = free_port()
    environment = env.worker_env(task_queue, database_url)
    environment["API_TOKEN"] = token
    argv = [sys.executable, "-m", "launch.cli", "api", "--host", "127.0.0.1", "--port", str(port)]
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


QUIET_CORES = 0.05  # a worker using less than this for two seconds in a row is quiet


async def _wait_until_quiet(worker: ManagedProcess, bound_seconds: float) -> float:
    """Seconds until the worker's CPU use stays under QUIET_CORES for two seconds (bounded)."""
    began = time.monotonic()
    quiet_in_a_row = 0
    last = worker.cpu_seconds()
    while quiet_in_a_row < 2 and time.monotonic() - began < bound_seconds:
        await asyncio.sleep(1.0)
        now = worker.cpu_seconds()
        quiet_in_a_row = quiet_in_a_row + 1 if now - last < QUIET_CORES else 0
        last = now
    return round(time.monotonic() - began, 1)


def _own_cpu() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


async def _insert_rows_only(pool: Any, count: int) -> None:
    """Bot rows without tasks or workflows (the list row's bulk)."""
    await bots_table.insert_bare_bots(pool, [f"row-{n:06d}" for n in range(1, count + 1)], name="row")


def _row(what: str, figures: dict[str, Any], per_second: Any) -> list[Any]:
    return [
        what,
        figures["count"],
        figures["p50_ms"],
        figures["p95_ms"],
        figures["p99_ms"],
        figures["max_ms"],
        per_second,
    ]


def _goal(name: str, target_ms: float, figures: dict[str, Any]) -> Any:
    return goal(
        name,
        f"< {target_ms:.0f} ms",
        figures["p99_ms"],
        figures["count"] > 0 and figures["p99_ms"] < target_ms,
    )


async def run(ctx: RunContext, result: Result) -> None:
    result["description"] = DESCRIPTION
    missing = missing_module("api.app", *PROJECT_MODULES)
    if missing is not None:
        result["notes"].append(f"not available yet ({missing} is missing); not run")
        return
    status_seconds, feed_seconds = durations(ctx.quick)
    size = sizes(ctx.quick)
    result["config"] = {
        "status_clients": STATUS_CLIENTS,
        "status_seconds": status_seconds,
        "fleet_bots": size["fleet_bots"],
        "fleet_poll_seconds": FLEET_POLL_SECONDS,
        "list_bots": size["list_bots"],
        "list_limit": LIST_LIMIT,
        "list_clients": LIST_CLIENTS,
        "control_bots": CONTROL_BOTS,
        "control_cycles": size["control_cycles"],
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
            status_bot = BotPlan("status-00", soon)
            feed_bot = BotPlan("feed-00", soon)
            await insert_project_bots(pool, [status_bot], 10, "noop", {})
            await insert_project_bots(pool, [feed_bot], 1, "noop", {})
            await start_project_bots(env, task_queue, [status_bot.bot_id, feed_bot.bot_id])
            await asyncio.sleep(2 if ctx.quick else 4)  # first rounds done

            ctx.progress.set_phase(f"{NAME}: {STATUS_CLIENTS} clients on GET /status", status_seconds)
            processes = {"api": api, "worker": worker, "temporal": env.temporal}
            cpu_before = {name: process.cpu_seconds() for name, process in processes.items() if process}
            bench_before = _own_cpu()
            status = await status_load(url, token, [status_bot.bot_id], status_seconds)
            # Which process the 50 clients saturate: CPU seconds per second of load, per process.
            status["cpu_cores_used"] = {
                name: round((process.cpu_seconds() - cpu_before[name]) / status_seconds, 2)
                for name, process in processes.items()
                if process
            } | {"load generator": round((_own_cpu() - bench_before) / status_seconds, 2)}
            ctx.progress.set_phase(f"{NAME}: {STATUS_CLIENTS} callers of the status query", status_seconds)
            query = await query_load(env, status_bot.bot_id, status_seconds)

            fleet_count = size["fleet_bots"]
            ctx.progress.set_phase(f"{NAME}: starting {fleet_count} bots", fleet_count / 15)
            far = time.time() + FAR_SECONDS
            fleet = [BotPlan(f"fleet-{index:05d}", far) for index in range(fleet_count)]
            await insert_project_bots(pool, fleet, 3600, "noop", {})
            began = time.monotonic()
            await start_project_bots(env, task_queue, [plan.bot_id for plan in fleet])
            fleet_start_seconds = round(time.monotonic() - began, 1)
            # The row measures a settled fleet's status, not status during a storm of first plan loads.
            settle_seconds = await _wait_until_quiet(worker, 60 if ctx.quick else 180)
            ctx.progress.set_phase(f"{NAME}: {fleet_count} bots, 1 status client each", status_seconds)
            fleet_status = await fleet_load(url, token, [plan.bot_id for plan in fleet], status_seconds)

            rows_only = size["list_bots"] - fleet_count - 2
            ctx.progress.set_phase(f"{NAME}: GET /bots over {size['list_bots']} bots", 10)
            await _insert_rows_only(pool, rows_only)
            listing = await list_load(url, token)

            ctx.progress.set_phase(f"{NAME}: start/stop round trips", 10)
            control_bots = [BotPlan(f"control-{index:02d}", far) for index in range(CONTROL_BOTS)]
            await insert_project_bots(pool, control_bots, 3600, "noop", {})
            await bots_table.set_schedulers_enabled(
                pool, dict.fromkeys((plan.bot_id for plan in control_bots), False)
            )
            control = await control_load(
                url, token, [plan.bot_id for plan in control_bots], size["control_cycles"]
            )

            ctx.progress.set_phase(f"{NAME}: feed with 1 client", feed_seconds)
            one_rate, one_delays = await query_rate(
                env, feed_clients(url, token, feed_bot.bot_id, 1, feed_seconds), feed_seconds
            )
            ctx.progress.set_phase(f"{NAME}: feed with {FEED_CLIENTS} clients", feed_seconds)
            many_rate, many_delays = await query_rate(
                env, feed_clients(url, token, feed_bot.bot_id, FEED_CLIENTS, feed_seconds), feed_seconds
            )
        finally:
            if api is not None:
                api.stop()
            await pool.close()

    one, many = latency_summary_ms(one_delays), latency_summary_ms(many_delays)
    result["systems"] = {
        "project": {
            "status": status,
            "status_query_reference": query,
            "status_fleet": fleet_status
            | {
                "bots": fleet_count,
                "start_calls_seconds": fleet_start_seconds,
                "settle_seconds": settle_seconds,
            },
            "list": listing | {"bots": size["list_bots"]},
            "start_stop": control,
            "feed_1_client": {"queries_per_second": one_rate, "delivery_delay": one},
            f"feed_{FEED_CLIENTS}_clients": {"queries_per_second": many_rate, "delivery_delay": many},
        }
    }
    result["table"] = {
        "columns": ["what", "count", "p50 ms", "p95 ms", "p99 ms", "max ms", "per second"],
        "rows": [
            _row(f"GET /status, {STATUS_CLIENTS} clients, 1 bot", status, status["requests_per_second"]),
            _row(
                f"(reference) `status` query, {STATUS_CLIENTS} callers, 1 bot",
                query,
                query["requests_per_second"],
            ),
            _row(
                f"GET /status, {fleet_count} running bots, 1 client each (every {FLEET_POLL_SECONDS:.0f} s)",
                fleet_status,
                fleet_status["requests_per_second"],
            ),
            _row(
                f"GET /bots?limit={LIST_LIMIT}, {size['list_bots']} bots, {LIST_CLIENTS} clients",
                listing,
                None,
            ),
            _row(f"POST /start + /stop, {CONTROL_BOTS} bots at once", control, None),
            _row("feed, 1 client: event delay / queries", one, one_rate),
            _row(f"feed, {FEED_CLIENTS} clients: event delay / queries", many, many_rate),
        ],
    }
    query_ratio = ratio(many_rate, one_rate)
    result["ratios"] = {
        f"Temporal queries/s, {FEED_CLIENTS} clients / 1 client": query_ratio,
        "status query p99 / GET /status p99 (1 bot, 50 clients)": ratio(query["p99_ms"], status["p99_ms"]),
    }
    result["goals"] += [
        _goal("GET /status p99 (50 clients, 1 bot)", GOAL_STATUS_P99_MS, status),
        _goal(f"GET /status p99 ({fleet_count} bots, 1 client each)", GOAL_STATUS_P99_MS, fleet_status),
        _goal(f"GET /bots?limit={LIST_LIMIT} p99 ({size['list_bots']} bots)", GOAL_LIST_P99_MS, listing),
        _goal("POST /start, /stop p99", GOAL_CONTROL_P99_MS, control),
        goal(
            "Temporal queries independent of feed clients",
            "100 clients / 1 client <= 1.1",
            query_ratio,
            None if query_ratio is None else query_ratio <= 1.1,
        ),
    ]
    result["notes"].append(
        "CPU cores busy during the 50-client status load: "
        + ", ".join(f"{name} {cores}" for name, cores in status["cpu_cores_used"].items())
    )
    for what, figures in (
        ("GET /status", status),
        ("GET /status (fleet)", fleet_status),
        ("GET /bots", listing),
        ("start/stop", control),
    ):
        if figures["errors"]:
            result["notes"].append(f"{what}: {figures['errors']} failed requests")
    result["notes"].append(
        f"GET /bots: {fleet_count + 2} of the {size['list_bots']} bots have running workflows, the rest "
        "are rows only; each page's state is one ListWorkflowExecutions call whatever the mix"
    )
    result["notes"].append(
        f"fleet of {fleet_count}: start calls took {fleet_start_seconds} s, the worker was quiet "
        f"{settle_seconds} s after them; the fleet's status row was measured after that"
    )
    result["notes"].append(
        "the load generator (aiohttp, httpx, websockets) runs in the benchmark process on the same 2 cores as "
        "the API, the worker and Temporal, so it takes CPU from what it measures"
    )
