"""Idle cost: 10,000 bots whose tasks are an hour away cost the worker (almost) nothing.

Worker and server CPU seconds and worker RSS over 60 s with 0 bots, then the same after starting
10,000 bots (same worker process, same server), and the time it took to start them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from bench.baselines import BotPlan
from bench.env import BenchEnv, ManagedProcess
from bench.report import Result, goal
from bench.scenarios import PROJECT_MODULES, RunContext, missing_module
from bench.scenarios.common import insert_project_bots, start_project_bots
from bench.stats import ratio
from workflows.models import WORKFLOW_NAME
from xbot.storage import metrics as aggregates
from xbot.storage.pool import create_pool

NAME = "idle"
DESCRIPTION = (
    "10,000 bots whose only task is an hour away. Worker and dev-server CPU seconds and the worker's "
    "RSS over 60 s, first with 0 bots and then, in the same processes, with the 10,000 bots started "
    "(signal-with-start, 50 in flight). Also the time to start them and until the worker is quiet again."
)
GOAL_CPU_RATIO = 1.05
GOAL_RSS_MB = 500.0
# Issue 15: from the first start call until every bot has had its first round and the worker is quiet.
GOAL_SETTLED_SECONDS = 120.0
SETTLE_TIMEOUT_SECONDS = 600.0
CPU_TICKS_SECONDS = 0.02


def sizes(quick: bool) -> tuple[int, float]:
    """(bots, measuring seconds)."""
    return (100, 3.0) if quick else (10_000, 60.0)


def estimate_seconds(quick: bool) -> float:
    bots, measure = sizes(quick)
    return 15 + 2 * measure + bots * 0.02


async def _measure(worker: ManagedProcess, server: ManagedProcess, seconds: float) -> dict[str, float]:
    """CPU seconds used over `seconds`, and the highest RSS sampled once a second."""
    cpu_worker, cpu_server = worker.cpu_seconds(), server.cpu_seconds()
    rss_max = worker.rss_bytes()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(1.0, left))
        rss_max = max(rss_max, worker.rss_bytes())
    return {
        "worker_cpu_seconds": round(worker.cpu_seconds() - cpu_worker, 3),
        "server_cpu_seconds": round(server.cpu_seconds() - cpu_server, 3),
        "worker_rss_mb": round(rss_max / 2**20, 1),
        "server_rss_mb": round(server.rss_bytes() / 2**20, 1),
        "seconds": seconds,
    }


async def _wait_until_quiet(env: BenchEnv, worker: ManagedProcess, bots: int) -> float:
    """Seconds until every started bot has finished its first round (it reports itself running in
    the `SchedulerRunning` search attribute) and then the worker used < 5% of a core for 3 s in a row.

    Quietness alone is not enough: on a busy machine the worker can sit idle for seconds while it
    waits for a starved server, with first rounds still to come.
    """
    began = time.monotonic()
    query = f"WorkflowType = '{WORKFLOW_NAME}' AND SchedulerRunning = true"
    counted = False
    while time.monotonic() - began < SETTLE_TIMEOUT_SECONDS:
        try:
            if (await env.client.count_workflows(query)).count >= bots:
                counted = True
                break
        except Exception:
            break  # no visibility query: fall back to quietness alone
        await asyncio.sleep(1.0)
    quiet_seconds = 0
    while time.monotonic() - began < SETTLE_TIMEOUT_SECONDS and quiet_seconds < (3 if counted else 10):
        before = worker.cpu_seconds()
        await asyncio.sleep(1.0)
        quiet_seconds = quiet_seconds + 1 if worker.cpu_seconds() - before < 0.05 else 0
    return time.monotonic() - began


def _cpu_goal_met(empty: dict[str, float], loaded: dict[str, float]) -> bool:
    """<= 1.05x, allowing the resolution of the readings: two 10 ms ticks (an idle worker may use 0.00 s,
    and no ratio exists then)."""
    return loaded["worker_cpu_seconds"] <= GOAL_CPU_RATIO * empty["worker_cpu_seconds"] + CPU_TICKS_SECONDS


async def run(ctx: RunContext, result: Result) -> None:
    bots, seconds = sizes(ctx.quick)
    result["description"] = DESCRIPTION
    result["config"] = {"bots": bots, "measure_seconds": seconds, "task_due_in_seconds": 3600}
    missing = missing_module(*PROJECT_MODULES)
    if missing is not None:
        result["notes"].append(f"project not available yet ({missing} is missing); not run")
        return
    async with BenchEnv(ctx.postgres, ctx.workdir, NAME) as env:
        assert env.temporal is not None
        database_url = await ctx.postgres.new_database()
        pool = await create_pool(database_url, min_size=1, max_size=4)
        try:
            task_queue = f"bench-{uuid.uuid4().hex[:8]}"
            worker = await env.start_project_worker(task_queue, database_url)
            ctx.progress.set_phase(f"{NAME}: worker with 0 bots", seconds + 3)
            await asyncio.sleep(3)  # let start-up work finish before measuring
            empty = await _measure(worker, env.temporal, seconds)

            ctx.progress.set_phase(f"{NAME}: starting {bots} bots", bots * 0.02)
            due = time.time() + 3600
            plans = [BotPlan(f"idle-{index:05d}", due) for index in range(bots)]
            await insert_project_bots(pool, plans, 3600, "noop", {})
            began = time.monotonic()
            await start_project_bots(env, task_queue, [plan.bot_id for plan in plans])
            start_calls = time.monotonic() - began
            settle = await _wait_until_quiet(env, worker, bots)
            ctx.progress.set_phase(f"{NAME}: worker with {bots} idle bots", seconds)
            loaded = await _measure(worker, env.temporal, seconds)
            executions = await aggregates.count_executions(pool)
        finally:
            await pool.close()

    cpu_ratio = ratio(loaded["worker_cpu_seconds"], empty["worker_cpu_seconds"])
    result["systems"] = {
        "project": {
            "zero_bots": empty,
            "idle_bots": loaded,
            "start_calls_seconds": round(start_calls, 1),
            "start_calls_per_second": round(bots / max(start_calls, 1e-6), 1),
            "settled_after_seconds": round(start_calls + settle, 1),
            "executions_during_idle": executions,
        }
    }
    rows: list[list[Any]] = [
        [
            "0 bots",
            empty["worker_cpu_seconds"],
            empty["server_cpu_seconds"],
            empty["worker_rss_mb"],
            empty["server_rss_mb"],
        ],
        [
            f"{bots:,} idle bots",
            loaded["worker_cpu_seconds"],
            loaded["server_cpu_seconds"],
            loaded["worker_rss_mb"],
            loaded["server_rss_mb"],
        ],
    ]
    result["table"] = {
        "columns": [
            f"over {seconds:.0f} s",
            "worker CPU s",
            "server CPU s",
            "worker RSS MB",
            "server RSS MB",
        ],
        "rows": rows,
    }
    result["ratios"] = {
        "worker CPU idle bots / 0 bots": cpu_ratio,
        "server CPU idle bots / 0 bots": ratio(loaded["server_cpu_seconds"], empty["server_cpu_seconds"]),
    }
    difference = loaded["worker_cpu_seconds"] - empty["worker_cpu_seconds"]
    result["goals"] += [
        goal(
            "worker CPU with idle bots",
            f"<= {GOAL_CPU_RATIO}x of 0 bots",
            cpu_ratio,
            _cpu_goal_met(empty, loaded),
        ),
        goal(
            "worker RSS with idle bots",
            f"<= {GOAL_RSS_MB:.0f} MB",
            loaded["worker_rss_mb"],
            loaded["worker_rss_mb"] <= GOAL_RSS_MB,
        ),
        goal(
            f"{bots:,} bots started, worker quiet again",
            f"≤ {GOAL_SETTLED_SECONDS:.0f} s after the first start call",
            round(start_calls + settle, 1),
            start_calls + settle <= GOAL_SETTLED_SECONDS,
        ),
    ]
    result["notes"] += [
        f"starting {bots:,} bots: {start_calls:.1f} s of start calls ({bots / max(start_calls, 1e-6):.0f}/s), "
        f"worker quiet again {start_calls + settle:.1f} s after the first call",
        f"worker CPU difference: {difference:+.3f} CPU-seconds over {seconds:.0f} s "
        f"({1000 * difference / seconds:+.1f} ms per second); CPU times are counted in 10 ms ticks, so the "
        "verdict allows two ticks beyond 1.05x (with 0.00 s at 0 bots no ratio exists)",
        f"task executions while idle: {executions} (expected 0)",
    ]
