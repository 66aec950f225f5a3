"""Crash recovery: SIGKILL the worker while attempts are in flight, start a replacement at once.

N bots (100; 10 with --quick), each with one `webhook` task every 5-10 s (intervals 5, 6, ... 10 s
in turn) whose loopback receiver holds every answer for 3 s, so that at any moment a good share of
the bots has an attempt in flight. Once the load is steady, the real worker process (`xbot
worker`) is killed with SIGKILL while at least a third of the bots are inside their handler, and a
replacement worker is started on the same task queue at once.

Measured from the `bot_task_executions` rows (and, as a cross-check, from the receiver's arrival
times): for each bot, the time from the kill to its next execution start; for the bots whose
attempt was killed (a row with status `lost`) that is the re-run of the lost attempt. Every
occurrence due from the steady point to the end of the window is matched to its rows (by bot and
schedule slot): executed, skipped with a row (the previous run was still in progress), or without
any row at all (lost). An attempt (an execution key's run prefix) or an occurrence completed twice
is a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from temporalio.api.enums.v1 import TimeoutType

from bench.env import BenchEnv, ManagedProcess, spawn
from bench.receiver import Arrival, WebhookReceiver
from bench.report import Result, goal
from bench.scenarios import PROJECT_MODULES, RunContext, missing_module
from bench.scenarios.common import start_project_bots
from bench.stats import percentile
from xbot.storage import bots as bots_table
from xbot.storage import metrics as aggregates
from xbot.storage import task_definitions as definitions_table
from xbot.storage.pool import create_pool

NAME = "crash_recovery"
DESCRIPTION = (
    "100 bots (10 with --quick), each with one `webhook` task every 5-10 s whose loopback receiver answers "
    "after 3 s, on the real worker process (`xbot worker`). Once the load is steady (every bot has run, "
    "recent starts on time) and 20 s later, the worker is killed with SIGKILL while at least a third of the "
    "bots are inside their handler, and a replacement worker is started at once on the same task queue. "
    "Recovery = kill -> the bot's next execution start (`started_at` of its next row; for a killed bot, "
    "the re-run of its `lost` attempt). Every occurrence due from the steady point to 50 s after the kill "
    "is matched to its rows by schedule slot: executed, skipped with a row (its previous run was still in "
    "progress), or without any row (lost). Duplicates: an attempt (execution key without its attempt "
    "number) or an occurrence completed twice."
)
GOAL_RECOVERY_SECONDS = 15.0
INTERVALS_SECONDS = (5, 6, 7, 8, 9, 10)
HOLD_SECONDS = 3.0
# Slots for the attempts in flight at once (handlers, early-wake waits and the re-runs' burst).
WORKER_CONCURRENCY = 150
# A row's due time this far from its schedule slot is off the task's phase.
PHASE_TOLERANCE_SECONDS = 0.05
# The share of bots inside their handler that the kill waits for (bounded by KILL_WAIT_SECONDS).
KILL_IN_FLIGHT_SHARE = 1 / 3
KILL_WAIT_SECONDS = 10.0
# The replacement's CPU is measured from its start to this long after the kill.
CPU_WINDOW_SECONDS = 20.0
# Executions due this long after the kill count as "after recovery".
SETTLED_AFTER_SECONDS = 25.0
# First due times are spread over this long after T0, whatever the interval.
FIRST_SPREAD_SECONDS = 5.0
# Steady: every bot has run, and 90% of the attempts due over the last 5 s started at most this late.
STEADY_LATENESS_SECONDS = 0.5
ACTIVE_STATUSES = frozenset({"started", "waiting_lock", "completed", "retrying", "failed"})
COUNTS = (
    "expected",
    "executed",
    "skipped",
    "without_row",
    "without_row_jumped",
    "lost_not_rerun",
    "lost_attempts",
    "lost_rerun",
    "lost_rerun_completed",
    "lost_rerun_more_than_once",
    "killed_bots",
    "attempts_completed_twice",
    "occurrences_completed_twice",
    "off_phase",
)


@dataclass(frozen=True)
class Plan:
    bots: int
    lead_seconds: float  # "start the bots" -> T0, the first due time (all within FIRST_SPREAD)
    steady_seconds: float  # once steady: the reference window before the kill
    observe_seconds: float  # kill -> end of the window (due times checked up to here)
    grace_seconds: float  # wait after the window before reading the rows
    steady_timeout_seconds: float  # T0 -> give up waiting for a steady load (and kill anyway)


def plan(quick: bool) -> Plan:
    if quick:
        return Plan(
            bots=10,
            lead_seconds=2,
            steady_seconds=2,
            observe_seconds=16,
            grace_seconds=1,
            steady_timeout_seconds=15,
        )
    return Plan(
        bots=100,
        lead_seconds=8,
        steady_seconds=20,
        observe_seconds=50,
        grace_seconds=4,
        steady_timeout_seconds=90,
    )


def estimate_seconds(quick: bool) -> float:
    load = plan(quick)
    steady_wait = FIRST_SPREAD_SECONDS + (2 if quick else 10)
    return (
        25 + load.lead_seconds + steady_wait + load.steady_seconds + load.observe_seconds + load.grace_seconds
    )


@dataclass(frozen=True)
class BotSchedule:
    bot_id: str
    interval_seconds: int
    first_due_epoch: float

    def slot(self, due_epoch: float) -> tuple[int, float]:
        """The schedule slot nearest to a due time, and how far the due time is from it."""
        index = round((due_epoch - self.first_due_epoch) / self.interval_seconds)
        return index, due_epoch - (self.first_due_epoch + index * self.interval_seconds)

    def slots_between(self, start_epoch: float, end_epoch: float) -> range:
        """The slots due in [start, end)."""
        first = max(0, math.ceil((start_epoch - self.first_due_epoch) / self.interval_seconds))
        end = max(first, math.ceil((end_epoch - self.first_due_epoch) / self.interval_seconds))
        return range(first, end)


@dataclass(frozen=True)
class Row:
    bot_id: str
    status: str
    execution_key: str
    attempt: int
    due_epoch: float
    started_epoch: float
    completed_epoch: float  # NaN while open
    worker_id: str

    @property
    def run_key(self) -> str:
        """The run an attempt belongs to: its execution key without the attempt number."""
        return self.execution_key.rsplit("/", 1)[0]


def make_schedules(prefix: str, bots: int, t0: float) -> list[BotSchedule]:
    schedules = []
    for index in range(bots):
        interval = INTERVALS_SECONDS[index % len(INTERVALS_SECONDS)]
        first_due = t0 + FIRST_SPREAD_SECONDS * index / bots
        schedules.append(BotSchedule(f"{prefix}-{index:05d}", interval, first_due))
    return schedules


async def insert_bots(pool: asyncpg.Pool, schedules: list[BotSchedule], url: str) -> None:
    ids = [s.bot_id for s in schedules]
    async with pool.acquire() as connection, connection.transaction():
        await bots_table.insert_bare_bots(connection, ids, scheduler_enabled=True)
        await definitions_table.insert_interval_definitions(
            connection,
            ids,
            [s.interval_seconds for s in schedules],
            [datetime.fromtimestamp(s.first_due_epoch, UTC) for s in schedules],
            "webhook",
            {"url": url, "timeout_seconds": 30},
        )


async def read_rows(pool: asyncpg.Pool, prefix: str) -> list[Row]:
    records = await aggregates.fleet_attempts(pool, prefix)
    return [
        Row(
            r["bot_id"],
            r["status"],
            r["execution_key"] or "",
            r["attempt_number"],
            r["due"],
            r["started"],
            r["completed"],
            r["worker_id"],
        )
        for r in records
    ]


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


async def _drive(
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


# --------------------------------------------------------------------------------- analysis


def _seconds(values: list[float]) -> dict[str, Any]:
    ordered = sorted(value for value in values if not math.isnan(value))
    if not ordered:
        return {"count": 0, "p50_s": math.nan, "p95_s": math.nan, "max_s": math.nan}
    return {
        "count": len(ordered),
        "p50_s": round(percentile(ordered, 0.5), 3),
        "p95_s": round(percentile(ordered, 0.95), 3),
        "max_s": round(ordered[-1], 3),
    }


def analyse(
    schedules: list[BotSchedule],
    rows: list[Row],
    arrivals: list[Arrival],
    window_start: float,
    kill_epoch: float,
    window_end: float,
) -> dict[str, Any]:
    """Every figure of the scenario from the rows, the arrivals and the instants (pure)."""
    by_bot: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_bot[row.bot_id].append(row)
    first_arrival: dict[str, float] = {}
    for arrival in arrivals:
        at, body = arrival.at, arrival.body
        bot = str(body.get("botId", ""))
        if at >= kill_epoch and at < first_arrival.get(bot, math.inf):
            first_arrival[bot] = at

    counts: dict[str, int] = dict.fromkeys(COUNTS, 0)
    killed_recovery: list[float] = []
    lost_recorded: list[float] = []
    killed_arrival_recovery: list[float] = []
    other_recovery: list[float] = []
    other_lateness: list[float] = []
    before_lateness: list[float] = []
    settled_lateness: list[float] = []
    unrecovered: list[str] = []
    back_on_schedule = 0
    problems: list[str] = []
    for schedule in schedules:
        bot_rows = sorted(by_bot.get(schedule.bot_id, []), key=lambda r: r.started_epoch)
        slots: dict[int, list[Row]] = defaultdict(list)
        for row in bot_rows:
            index, offset = schedule.slot(row.due_epoch)
            slots[index].append(row)
            if row.status != "skipped" and abs(offset) > PHASE_TOLERANCE_SECONDS:
                counts["off_phase"] += 1
                problems.append(f"{row.execution_key}: due {offset:+.3f} s off its slot")
        for index in schedule.slots_between(window_start, window_end):
            statuses = {row.status for row in slots.get(index, [])}
            counts["expected"] += 1
            if statuses & ACTIVE_STATUSES:
                counts["executed"] += 1
            elif "lost" in statuses:
                counts["lost_not_rerun"] += 1
            elif "skipped" in statuses:
                counts["skipped"] += 1
            else:
                counts["without_row"] += 1
                due = schedule.first_due_epoch + index * schedule.interval_seconds
                # Jumped over: the bot was still writing rows of earlier slots after this one was due.
                behind = any(r.started_epoch > due for i, rs in slots.items() if i < index for r in rs)
                counts["without_row_jumped"] += behind
                problems.append(
                    f"{schedule.bot_id} slot {index} (due {due - kill_epoch:+.1f} s after the kill) has no row"
                    + (" (its bot was still recording earlier slots then)" if behind else "")
                )
        completed_per_slot: defaultdict[int, int] = defaultdict(int)
        completed_per_run: defaultdict[str, int] = defaultdict(int)
        for row in bot_rows:
            if row.status == "completed":
                completed_per_slot[schedule.slot(row.due_epoch)[0]] += 1
                completed_per_run[row.run_key] += 1
        counts["occurrences_completed_twice"] += sum(1 for n in completed_per_slot.values() if n > 1)
        counts["attempts_completed_twice"] += sum(1 for n in completed_per_run.values() if n > 1)

        lost = [row for row in bot_rows if row.status == "lost"]
        counts["lost_attempts"] += len(lost)
        for row in lost:
            lost_recorded.append(row.completed_epoch - kill_epoch)
            reruns = [
                r
                for r in bot_rows
                if r.run_key == row.run_key and r.attempt > row.attempt and r.status != "lost"
            ]
            counts["lost_rerun"] += bool(reruns)
            counts["lost_rerun_completed"] += any(r.status == "completed" for r in reruns)
            counts["lost_rerun_more_than_once"] += len(reruns) > 1
            if not reruns:
                problems.append(f"{row.execution_key}: lost and never re-run")
        active_after = [
            row for row in bot_rows if row.status in ACTIVE_STATUSES and row.started_epoch >= kill_epoch
        ]
        for row in bot_rows:
            if row.status in ACTIVE_STATUSES and row.attempt == 1:
                lateness = row.started_epoch - row.due_epoch
                if window_start <= row.due_epoch < kill_epoch and row.started_epoch < kill_epoch:
                    before_lateness.append(lateness)
                elif row.due_epoch >= kill_epoch + SETTLED_AFTER_SECONDS:
                    settled_lateness.append(lateness)
        if not active_after:
            unrecovered.append(schedule.bot_id)
            continue
        recovery = active_after[0].started_epoch - kill_epoch
        if lost:
            counts["killed_bots"] += 1
            killed_recovery.append(recovery)
            if schedule.bot_id in first_arrival:
                killed_arrival_recovery.append(first_arrival[schedule.bot_id] - kill_epoch)
            # Back to normal: a fresh occurrence (attempt 1) after the re-run, on its slot, on time.
            rerun_start = active_after[0].started_epoch
            if any(
                r.attempt == 1
                and r.started_epoch > rerun_start
                and abs(schedule.slot(r.due_epoch)[1]) <= PHASE_TOLERANCE_SECONDS
                and r.started_epoch - r.due_epoch < 1.0
                for r in active_after
            ):
                back_on_schedule += 1
        else:
            other_recovery.append(recovery)
            other_lateness.append(active_after[0].started_epoch - active_after[0].due_epoch)
    return {
        "counts": counts,
        "killed_bots_recovery": _seconds(killed_recovery),
        "killed_bots_arrival_recovery": _seconds(killed_arrival_recovery),
        "lost_attempts_recorded": _seconds(lost_recorded),
        "killed_bots_back_on_schedule": back_on_schedule,
        "other_bots_recovery": _seconds(other_recovery),
        "other_bots_first_lateness": _seconds(other_lateness),
        "lateness_before_kill": _seconds(before_lateness),
        "lateness_after_recovery": _seconds(settled_lateness),
        "bots_without_execution_after_kill": unrecovered,
        "problems": problems[:20],
        "problem_count": len(problems),
    }


def breakdown_note(figures: dict[str, Any], config: dict[str, Any]) -> str | None:
    """Where a killed bot's recovery time went, from the figures and the scheduler's timeouts."""
    recorded, killed = figures["lost_attempts_recorded"], figures["killed_bots_recovery"]
    if not recorded["count"]:
        return None
    heartbeat, sticky = config["heartbeat_timeout_seconds"], config["sticky_schedule_to_start_seconds"]
    timeouts = figures.get("workflow_task_timeouts", {})
    rest = recorded["p50_s"] - heartbeat - sticky
    polled = figures["replacement_polling_after_seconds"]
    takeover = (
        f"so at least {rest:.1f} s went to the replacement taking the bots over (it has no cached workflow "
        f"and replays each bot's history, all bots at once; it polled {polled:.1f} s after the kill)"
        if rest >= 0.5
        else f"the replacement (polling {polled:.1f} s after the kill) added little on top of these timeouts"
    )
    return (
        f"where the time goes: a lost attempt is noticed by its heartbeat timeout (at most {heartbeat:g} s "
        f"after the kill) and the bot's next workflow task first waits out the dead worker's sticky queue "
        f"({sticky:g} s; {timeouts.get('sticky_dead_worker', 0)} such timeouts). Kill -> `lost` row took "
        f"{recorded['p50_s']:.1f} s median ({recorded['max_s']:.1f} s max); {takeover}; the re-run started "
        f"{killed['p50_s'] - recorded['p50_s']:.1f} s (median) after its loss was recorded."
    )


def _row(label: str, figures: dict[str, Any]) -> list[Any]:
    return [label, figures["count"], figures["p50_s"], figures["p95_s"], figures["max_s"]]


def _count_row(label: str, value: Any) -> list[Any]:
    return [label, value, None, None, None]


# -------------------------------------------------------------------------------------- run


async def run(ctx: RunContext, result: Result) -> None:
    load = plan(ctx.quick)
    result["description"] = DESCRIPTION
    result["config"] = {
        "bots": load.bots,
        "intervals_seconds": list(INTERVALS_SECONDS),
        "handler_seconds": HOLD_SECONDS,
        "worker_concurrency": WORKER_CONCURRENCY,
        "observe_seconds_after_kill": load.observe_seconds,
    }
    missing = missing_module(*PROJECT_MODULES)
    if missing is not None:
        result["notes"].append(f"project not available yet ({missing} is missing); not run")
        return
    from launch.worker import STICKY_QUEUE_TIMEOUT
    from workflows.models import WORKFLOW_NAME, SchedulerOptions

    result["config"]["heartbeat_timeout_seconds"] = SchedulerOptions().heartbeat_timeout_seconds
    result["config"]["sticky_schedule_to_start_seconds"] = STICKY_QUEUE_TIMEOUT.total_seconds()
    total = estimate_seconds(ctx.quick) - 20
    ctx.progress.set_phase(f"{NAME}: {load.bots} bots, SIGKILL, replacement", total)
    async with BenchEnv(ctx.postgres, ctx.workdir, NAME) as env:
        database_url = await ctx.postgres.new_database()
        pool = await create_pool(database_url, min_size=1, max_size=4)
        receiver = await WebhookReceiver(hold_seconds=HOLD_SECONDS).start()
        workers: list[ManagedProcess] = []
        try:
            prefix = f"c{uuid.uuid4().hex[:6]}"
            t0 = time.time() + load.lead_seconds
            schedules = make_schedules(prefix, load.bots, t0)
            await insert_bots(pool, schedules, receiver.url)
            line = await _drive(env, pool, database_url, load, schedules, prefix, t0, workers)
            rows = await read_rows(pool, prefix)
            timeouts = await workflow_task_timeouts(
                env, [s.bot_id for s in schedules], line.kill, line.replacement_pid
            )
            await env.terminate_running(f"WorkflowType = '{WORKFLOW_NAME}'")
        finally:
            for worker in reversed(workers):
                worker.stop()
            await receiver.stop()
            await pool.close()

    figures = analyse(schedules, rows, receiver.arrivals, line.window_start, line.kill, line.window_end)
    counts = figures["counts"]
    in_flight = line.in_flight
    figures.update(
        steady_before_kill=line.steady,
        steady_after_t0_seconds=round(line.window_start - t0, 2),
        in_flight_handlers_at_kill=in_flight,
        replacement_start_delay_seconds=round(line.replacement_started - line.kill, 3),
        replacement_polling_after_seconds=round(line.replacement_ready - line.kill, 3),
        killed_worker_cpu_per_second=round(line.cpu_before, 3),
        replacement_cpu_per_second=round(line.cpu_after, 3),
        workflow_task_timeouts=timeouts,
    )
    result["systems"] = {"project": figures}
    killed = figures["killed_bots_recovery"]
    result["table"] = {
        "columns": ["measure", "count", "median s", "p95 s", "max s"],
        "rows": [
            _row("killed bots: kill -> re-run start (row)", killed),
            _row("lost attempts: kill -> row settled `lost`", figures["lost_attempts_recorded"]),
            _row("killed bots: kill -> re-run webhook arrival", figures["killed_bots_arrival_recovery"]),
            _row("other bots: kill -> next execution start", figures["other_bots_recovery"]),
            _row("other bots: lateness of that execution", figures["other_bots_first_lateness"]),
            _row("lateness before the kill", figures["lateness_before_kill"]),
            _row(f"lateness from kill + {SETTLED_AFTER_SECONDS:.0f} s", figures["lateness_after_recovery"]),
            _count_row("handlers in flight at the kill", in_flight),
            _count_row(
                "killed bots back on their schedule",
                f"{figures['killed_bots_back_on_schedule']}/{counts['killed_bots']}",
            ),
            _count_row("occurrences due in the window", counts["expected"]),
            _count_row("... executed", counts["executed"]),
            _count_row("... skipped with a row (previous run in progress)", counts["skipped"]),
            _count_row("... without any row (lost)", counts["without_row"]),
            _count_row(
                "...... of which its bot was still recording earlier slots", counts["without_row_jumped"]
            ),
            _count_row("... with only a `lost` row (never re-run)", counts["lost_not_rerun"]),
            _count_row("lost attempts (rows `lost`)", counts["lost_attempts"]),
            _count_row(
                "... re-run / re-run completed",
                f"{counts['lost_rerun']}/{counts['lost_rerun_completed']}",
            ),
            _count_row("attempts completed twice", counts["attempts_completed_twice"]),
            _count_row("occurrences completed twice", counts["occurrences_completed_twice"]),
            _count_row("executions off their phase", counts["off_phase"]),
            _count_row(
                "workflow tasks timed out on the dead worker's sticky queue", timeouts["sticky_dead_worker"]
            ),
            _count_row(
                "... on the replacement's sticky queue (after it took the bot over)",
                timeouts["sticky_replacement"],
            ),
            _count_row("... on a sticky queue before the kill", timeouts["sticky_before_kill"]),
            _count_row(
                "workflow tasks in progress on the killed worker (start-to-close timeout)",
                timeouts["started_on_dead_worker"],
            ),
            _count_row("... on the replacement, past that timeout", timeouts["started_on_replacement"]),
        ],
    }
    worst = killed["max_s"]
    result["goals"].append(
        goal(
            "killed bot: kill -> next execution start, max",
            f"≤ {GOAL_RECOVERY_SECONDS:.0f} s",
            worst,
            None if not killed["count"] else worst <= GOAL_RECOVERY_SECONDS,
        )
    )
    lost_attempts = counts["lost_attempts"]
    rerun_once = lost_attempts - counts["lost_rerun_more_than_once"]
    result["goals"].append(
        goal(
            "lost attempts re-run exactly once",
            "all",
            f"{min(counts['lost_rerun'], rerun_once)}/{lost_attempts}",
            None
            if not lost_attempts
            else counts["lost_rerun"] == lost_attempts and rerun_once == lost_attempts,
        )
    )
    result["goals"].append(
        goal("due occurrences without a row", "0", counts["without_row"], not counts["without_row"])
    )
    duplicates = counts["attempts_completed_twice"] + counts["occurrences_completed_twice"]
    result["goals"].append(goal("completed twice", "0", duplicates, duplicates == 0))
    if not line.steady:
        result["notes"].append(
            f"the load was not steady {load.steady_timeout_seconds:.0f} s after T0 (some bot had not run, "
            f"or over 10% of recent starts were more than {STEADY_LATENESS_SECONDS} s late); killed anyway"
        )
    result["notes"].append(
        f"steady at T0 + {figures['steady_after_t0_seconds']} s; killed {load.steady_seconds:.0f} s later with "
        f"{in_flight} handlers in flight; the replacement was started "
        f"{figures['replacement_start_delay_seconds']} s after the kill and polled after "
        f"{figures['replacement_polling_after_seconds']} s; worker CPU {line.cpu_before:.2f} s/s before "
        f"the kill, replacement {line.cpu_after:.2f} s/s until kill + "
        f"{min(CPU_WINDOW_SECONDS, load.observe_seconds):.0f} s"
    )
    breakdown = breakdown_note(figures, result["config"])
    if breakdown is not None:
        result["notes"].append(breakdown)
    if figures["bots_without_execution_after_kill"]:
        names = figures["bots_without_execution_after_kill"]
        result["notes"].append(f"{len(names)} bot(s) never started an execution after the kill: {names[:5]}")
    for problem in figures["problems"][:5]:
        result["notes"].append(problem)
    if figures["problem_count"] > 5:
        result["notes"].append(f"... and {figures['problem_count'] - 5} more such problem(s)")
