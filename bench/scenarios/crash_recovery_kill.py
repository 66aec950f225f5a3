"""Driving the crash: the workers, the wait for a steady load, the SIGKILL and the replacement,
and the workflow task timeouts the crash left in the bots' histories."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass

import asyncpg
from temporalio.api.enums.v1 import TimeoutType

from bench.env import BenchEnv, ManagedProcess, spawn
from bench.scenarios.common import start_project_bots
from bench.scenarios.crash_recovery_load import FIRST_SPREAD_SECONDS, BotSchedule, Plan
from xbot.storage import metrics as aggregates

# Slots for the attempts in flight at once (handlers, early-wake waits and the re-runs' burst).
WORKER_CONCURRENCY = 150
# The share of bots inside their handler that the kill waits for (bounded by KILL_WAIT_SECONDS).
KILL_IN_FLIGHT_SHARE = 1 / 3
KILL_WAIT_SECONDS = 10.0
# The replacement's CPU is measured from its start to this long after the kill.
CPU_WINDOW_SECONDS = 20.0
# Steady: every bot has run, and 90% of the attempts due over the last 5 s started at most this late.
STEADY_LATENESS_SECONDS = 0.5


# ---------------------------------------------------------------------------------- workers


async def start_worker(env: BenchEnv, task_queue: str, database_url: str, label: str) -> ManagedProcess:
    """`xbot worker` with room for every attempt in flight; ready once *it* polls both queues (the
    dead worker stays listed among the pollers for a while, so its pid is what is looked for)."""
    environment = env.worker_env(task_queue, database_url)
    environment["WORKER_CONCURRENCY"] = str(WORKER_CONCURRENCY)
    argv = [sys.executable, "-m", "launch.cli", "worker"]
    worker = spawn(label, argv, environment, env.workdir / f"{label}.log", profiled=True)
    try:
        await env.wait_for_pollers(task_queue, worker, own=True)
    except BaseException:
        worker.stop()
        raise
    return worker


def sigkill(worker: ManagedProcess) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.popen.pid, signal.SIGKILL)
    worker.popen.wait()


async def in_flight_handlers(pool: asyncpg.Pool, prefix: str) -> int:
    return await aggregates.count_running_attempts(pool, prefix)


async def wait_until_steady(pool: asyncpg.Pool, prefix: str, bots: int, timeout_epoch: float) -> bool:
    """Every bot has started an execution, and 90% of those due over the last 5 s started on time."""
    while time.time() < timeout_epoch:
        started, worst = await aggregates.fleet_steadiness(pool, prefix)
        if started >= bots and worst <= STEADY_LATENESS_SECONDS:
            return True
        await asyncio.sleep(0.5)
    return False


@dataclass
class Timeline:
    """The instants (epoch seconds) and process figures of one run."""

    t0: float = 0.0
    steady: bool = False
    window_start: float = 0.0
    kill: float = 0.0
    in_flight: int = 0
    replacement_started: float = 0.0
    replacement_ready: float = 0.0
    replacement_pid: int = 0
    window_end: float = 0.0
    cpu_before: float = 0.0  # killed worker, CPU seconds per second over the reference window
    cpu_after: float = 0.0  # replacement, CPU seconds per second from its start to kill + CPU_WINDOW


async def drive(
    env: BenchEnv,
    pool: asyncpg.Pool,
    database_url: str,
    load: Plan,
    schedules: list[BotSchedule],
    prefix: str,
    t0: float,
    workers: list[ManagedProcess],
) -> Timeline:
    """Start the bots, wait for a steady load, kill the worker mid-flight, start a replacement."""
    task_queue = f"bench-{uuid.uuid4().hex[:8]}"
    line = Timeline(t0=t0)
    workers.append(await start_worker(env, task_queue, database_url, "worker-killed"))
    await start_project_bots(env, task_queue, [s.bot_id for s in schedules])
    await _sleep_until(t0 + FIRST_SPREAD_SECONDS)
    line.steady = await wait_until_steady(pool, prefix, load.bots, t0 + load.steady_timeout_seconds)
    line.window_start = time.time()
    cpu = workers[0].cpu_seconds()
    await _sleep_until(line.window_start + load.steady_seconds)
    # Kill while a good share of the bots is inside its handler (bounded wait).
    target = max(1, math.ceil(load.bots * KILL_IN_FLIGHT_SHARE))
    wait_until = time.monotonic() + KILL_WAIT_SECONDS
    while (in_flight := await in_flight_handlers(pool, prefix)) < target:
        if time.monotonic() > wait_until:
            break
        await asyncio.sleep(0.05)
    line.cpu_before = (workers[0].cpu_seconds() - cpu) / max(time.time() - line.window_start, 1e-6)
    line.in_flight = in_flight
    line.kill = time.time()
    sigkill(workers[0])
    line.replacement_started = time.time()
    workers.append(await start_worker(env, task_queue, database_url, "worker-replacement"))
    line.replacement_ready = time.time()
    line.replacement_pid = workers[1].popen.pid
    await _sleep_until(line.kill + min(CPU_WINDOW_SECONDS, load.observe_seconds))
    line.cpu_after = workers[1].cpu_seconds() / max(time.time() - line.replacement_started, 1e-6)
    line.window_end = line.kill + load.observe_seconds
    await _sleep_until(line.window_end + load.grace_seconds)
    return line


async def workflow_task_timeouts(env: BenchEnv, bot_ids: list[str], kill: float, pid: int) -> dict[str, int]:
    """Workflow task timeouts in the bots' histories. Schedule-to-start (a sticky queue nobody
    polled in time): before the kill, on the dead worker's queue, and on the replacement's once it
    had taken the bot over (completed one of its workflow tasks). Start-to-close: a workflow task
    the dead worker had started, or one the replacement did not finish in time."""
    names = ("sticky_before_kill", "sticky_dead_worker", "sticky_replacement")
    counts = dict.fromkeys((*names, "started_on_dead_worker", "started_on_replacement"), 0)
    semaphore = asyncio.Semaphore(8)
    replacement = f"{pid}@"

    async def one(bot_id: str) -> None:
        taken_over = False
        started_by: dict[int, str] = {}
        async with semaphore:
            async for event in env.client.get_workflow_handle(bot_id).fetch_history_events():
                kind = event.WhichOneof("attributes")
                if kind == "workflow_task_started_event_attributes":
                    started_by[event.event_id] = event.workflow_task_started_event_attributes.identity
                elif kind == "workflow_task_completed_event_attributes":
                    identity = event.workflow_task_completed_event_attributes.identity
                    taken_over = taken_over or identity.startswith(replacement)
                elif kind == "workflow_task_timed_out_event_attributes":
                    timed_out = event.workflow_task_timed_out_event_attributes
                    at = event.event_time.seconds + event.event_time.nanos / 1e9
                    if timed_out.timeout_type == TimeoutType.TIMEOUT_TYPE_START_TO_CLOSE:
                        by = started_by.get(timed_out.started_event_id, "")
                        on_replacement = by.startswith(replacement)
                        counts["started_on_replacement" if on_replacement else "started_on_dead_worker"] += 1
                    elif at < kill:
                        counts["sticky_before_kill"] += 1
                    else:
                        counts["sticky_replacement" if taken_over else "sticky_dead_worker"] += 1

    await asyncio.gather(*(one(bot_id) for bot_id in bot_ids))
    return counts


async def _sleep_until(epoch: float) -> None:
    delay = epoch - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
