"""The crash-recovery figures: every occurrence and attempt matched from the rows, the arrivals and
the instants (pure), and where a killed bot's recovery time went."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from bench.receiver import Arrival
from bench.scenarios.crash_recovery_load import BotSchedule, Row
from bench.stats import percentile

# A row's due time this far from its schedule slot is off the task's phase.
PHASE_TOLERANCE_SECONDS = 0.05
# Executions due this long after the kill count as "after recovery".
SETTLED_AFTER_SECONDS = 25.0
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
