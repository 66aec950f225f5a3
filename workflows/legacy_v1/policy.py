"""The scheduling policy as plain, deterministic functions: when a task is due, in which order due
tasks run, whether their dependencies let them, and how failed attempts are retried.

The workflow calls these with `workflow.now()` and `workflow.random()` values; activities call them
with the clock. Nothing here reads the clock, randomness or I/O by itself.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import croniter
from temporalio.common import RetryPolicy

from workflows.legacy_v1.models import TaskPlan

# ApplicationError types the task runner raises for failures that retrying cannot fix.
NON_RETRYABLE_TASK_ERROR = "NonRetryableTaskError"
UNKNOWN_TASK_TYPE = "UnknownTaskType"
NON_RETRYABLE_ERROR_TYPES = (NON_RETRYABLE_TASK_ERROR, UNKNOWN_TASK_TYPE)

# On top of the handler's own timeout (which the runner enforces and records itself): time to wait
# for the exact due instant and for shared locks. A dead worker is noticed by the heartbeat
# timeout, not by this one, so it can be generous.
LOCK_WAIT_ALLOWANCE = timedelta(minutes=10)


@dataclass(frozen=True)
class Schedule:
    """Exactly one of a fixed interval or a cron expression (UTC)."""

    interval: timedelta | None = None
    cron: str | None = None

    def __post_init__(self) -> None:
        if (self.interval is None) == (self.cron is None):
            raise ValueError("a schedule is an interval or a cron expression, not both or neither")
        if self.interval is not None and self.interval <= timedelta(0):
            raise ValueError("interval must be positive")


def schedule_of(task: TaskPlan) -> Schedule:
    if task.cron_expression:
        return Schedule(cron=task.cron_expression)
    if task.interval_seconds:
        return Schedule(interval=timedelta(seconds=task.interval_seconds))
    raise ValueError(f"task {task.id} has no schedule")


def valid_cron(expression: str) -> bool:
    try:
        return bool(croniter.is_valid(expression))
    except Exception:
        return False


def next_occurrence(schedule: Schedule, after: datetime) -> datetime:
    """The first occurrence strictly after `after` (for an interval: `after` + interval)."""
    if schedule.interval is not None:
        return after + schedule.interval
    assert schedule.cron is not None
    result: datetime = croniter(schedule.cron, after).get_next(datetime)
    return result


def advance(schedule: Schedule, nominal: datetime, now: datetime) -> datetime:
    """The next occurrence after running the one due at `nominal`, on the same phase.

    `nominal` + interval, never drifting with execution time; occurrences already missed (a bot
    stopped for hours) are skipped rather than replayed in a burst.
    """
    if schedule.interval is None:
        return next_occurrence(schedule, max(nominal, now))
    following = nominal + schedule.interval
    if following > now:
        return following
    missed = math.floor((now - nominal) / schedule.interval)
    return nominal + (missed + 1) * schedule.interval


def initial_due(task: TaskPlan, now: datetime, lead_seconds: float) -> datetime:
    """The seed's rule: `next_planned_run_at` if set; else last start + interval; else now + lead.

    A cron definition without a planned time takes its next occurrence after its last start, or
    after now when it never ran.
    """
    if task.next_planned_run_at is not None:
        return task.next_planned_run_at
    schedule = schedule_of(task)
    if task.last_started_at is not None:
        return next_occurrence(schedule, task.last_started_at)
    if schedule.cron is not None:
        return next_occurrence(schedule, now)
    return now + timedelta(seconds=lead_seconds)


def jittered(nominal: datetime, jitter_seconds: int, unit_random: float) -> datetime:
    """The instant to fire an occurrence: its nominal time plus up to `jitter_seconds`."""
    if jitter_seconds <= 0:
        return nominal
    offset_ms = math.floor(unit_random * jitter_seconds * 1000)
    return nominal + timedelta(milliseconds=offset_ms)


def wake_time(fire_at: datetime, early: timedelta) -> datetime:
    return fire_at - early


@dataclass(frozen=True)
class Candidate:
    """A task that may start now."""

    task_id: int
    priority: int
    fire_at: datetime


def dispatch_order(candidates: Iterable[Candidate], now: datetime) -> list[Candidate]:
    """Tasks due by `now` before those only inside the early-wake horizon; within each, higher
    priority first, then the earlier due time, then the lower id (stable).

    A task started early holds the bot while it waits for its instant, so letting a merely
    upcoming high-priority task outrank an overdue one would starve the overdue one whenever the
    high-priority task recurs faster than the horizon.
    """
    return sorted(candidates, key=lambda c: (c.fire_at > now, -c.priority, c.fire_at, c.task_id))


def is_fresh(schedule: Schedule, last_success_at: datetime | None, reference: datetime) -> bool:
    """Whether a dependency completed within its own interval as of `reference`.

    Measured against the dependent's due time rather than "now", so a dependency that just ran
    for this dependent counts as fresh however short its interval is.
    """
    if last_success_at is None:
        return False
    return next_occurrence(schedule, last_success_at) > reference


class DependencyVerdict(enum.Enum):
    READY = "ready"
    WAIT = "wait"
    RUN_FIRST = "run_first"
    SKIP = "skip"


@dataclass(frozen=True)
class DependencyView:
    """What the dependency resolution needs to know about one dependency."""

    task_id: int
    label: str
    schedule: Schedule
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_error: str | None
    busy: bool  # running, retrying or postponed by a rate limit: its outcome is pending
    paused: bool


@dataclass(frozen=True)
class DependencyDecision:
    verdict: DependencyVerdict
    run_first: tuple[int, ...] = ()
    reason: str | None = None


def resolve_dependencies(
    dependency_ids: Sequence[int], views: Mapping[int, DependencyView], due_at: datetime
) -> DependencyDecision:
    """Decide whether a task due at `due_at` may run.

    Unknown ids (deleted or deactivated definitions) are ignored. A dependency that failed after
    the dependent fell due, or that is paused while stale, makes the dependent skip this run.
    """
    run_first: list[int] = []
    waiting: list[str] = []
    for dep_id in dependency_ids:
        view = views.get(dep_id)
        if view is None or is_fresh(view.schedule, view.last_success_at, due_at):
            continue
        if view.last_failure_at is not None and view.last_failure_at >= due_at:
            error = f": {view.last_error}" if view.last_error else ""
            return DependencyDecision(DependencyVerdict.SKIP, reason=f"dependency {view.label} failed{error}")
        if view.busy:
            waiting.append(view.label)
        elif view.paused:
            return DependencyDecision(
                DependencyVerdict.SKIP, reason=f"dependency {view.label} is paused and has not run recently"
            )
        else:
            run_first.append(dep_id)
    if run_first:
        return DependencyDecision(
            DependencyVerdict.RUN_FIRST, tuple(run_first), reason="running stale dependencies first"
        )
    if waiting:
        return DependencyDecision(DependencyVerdict.WAIT, reason=f"waiting for {', '.join(waiting)}")
    return DependencyDecision(DependencyVerdict.READY)


def retry_policy(task: TaskPlan) -> RetryPolicy:
    """Temporal retries from the definition: first retry after `retry_delay_minutes`, exponential."""
    initial = timedelta(minutes=task.retry_delay_minutes)
    return RetryPolicy(
        initial_interval=initial,
        backoff_coefficient=task.retry_backoff_coefficient,
        maximum_interval=max(initial, timedelta(minutes=task.max_retry_delay_minutes)),
        maximum_attempts=task.max_retries + 1,
        non_retryable_error_types=list(NON_RETRYABLE_ERROR_TYPES),
    )


def retry_delay(task: TaskPlan, failed_attempt: int) -> timedelta:
    """The backoff Temporal applies after attempt `failed_attempt` fails (for status display)."""
    policy = retry_policy(task)
    assert policy.maximum_interval is not None
    cap = policy.maximum_interval.total_seconds()
    exponent = min(failed_attempt - 1, 200)  # beyond that the cap wins anyway; avoid float overflow
    seconds = policy.initial_interval.total_seconds() * policy.backoff_coefficient**exponent
    return timedelta(seconds=min(seconds, cap))


def start_to_close(task: TaskPlan, early_wake: timedelta) -> timedelta:
    """Twice the handler timeout (one lock holder ahead of us) plus the due wait and allowance."""
    return 2 * timedelta(seconds=task.timeout_seconds) + early_wake + LOCK_WAIT_ALLOWANCE
