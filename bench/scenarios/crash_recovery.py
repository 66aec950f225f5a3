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

import time
import uuid
from typing import Any

from bench.env import BenchEnv, ManagedProcess
from bench.receiver import WebhookReceiver
from bench.report import Result, goal
from bench.scenarios import PROJECT_MODULES, RunContext, missing_module
from bench.scenarios.crash_recovery_analysis import SETTLED_AFTER_SECONDS, analyse, breakdown_note
from bench.scenarios.crash_recovery_kill import (
    CPU_WINDOW_SECONDS,
    STEADY_LATENESS_SECONDS,
    WORKER_CONCURRENCY,
    drive,
    workflow_task_timeouts,
)
from bench.scenarios.crash_recovery_load import (
    FIRST_SPREAD_SECONDS,
    INTERVALS_SECONDS,
    insert_bots,
    make_schedules,
    plan,
    read_rows,
)
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
HOLD_SECONDS = 3.0


def estimate_seconds(quick: bool) -> float:
    load = plan(quick)
    steady_wait = FIRST_SPREAD_SECONDS + (2 if quick else 10)
    return (
        25 + load.lead_seconds + steady_wait + load.steady_seconds + load.observe_seconds + load.grace_seconds
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
            line = await drive(env, pool, database_url, load, schedules, prefix, t0, workers)
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
