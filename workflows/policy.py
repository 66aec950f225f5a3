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
from datetime import UTC, datetime, timedelta

from croniter import croniter

from workflows.models import TaskPlan

# ApplicationError types the task runner raises for failures that retrying cannot fix.
NON_RETRYABLE_TASK_ERROR = "NonRetryableTaskError"
UNKNOWN_TASK_TYPE = "UnknownTaskType"
NON_RETRYABLE_ERROR_TYPES = (NON_RETRYABLE_TASK_ERROR, UNKNOWN_TASK_TYPE)
# The runner's attempt ended without running to its end through no fault of the handler (its
# worker shut down): the workflow starts it again at once.
ATTEMPT_LOST = "AttemptLost"

# On top of the handler's timeout and the lock wait (each bounded by the task's timeout): time
# for the runner's own bookkeeping. A dead worker is noticed by the heartbeat timeout instead.
BOOKKEEPING_ALLOWANCE = timedelta(minutes=1)
# An attempt lost to a dead worker starts again at once; if attempts keep vanishing (a handler
# that kills its worker), the next ones wait a little longer, and this many in a row count as
# one failure of the run.
LOSSES_PER_FAILURE = 5
MAX_LOSS_DELAY = timedelta(seconds=30)


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


def cron_problem(expression: str) -> str | None:
    """Why a cron expression cannot be scheduled, or None when it can.

    Only deterministic expressions: croniter's `R` (random) fields would make the workflow's
    computation differ on replay, and `H` (hashed) fields need a hash id we do not give.
    """
    fields = expression.split()
    for field_ in fields:
        for part in field_.split(","):
            head = part.split("/")[0].split("(")[0].strip().upper()
            if head in ("R", "H"):
                return (
                    f"cron expression {expression!r} uses {head!r}: random and hashed fields are "
                    "not supported (every occurrence must be computable in advance)"
                )
    try:
        valid = croniter.is_valid(expression)
    except Exception:
        valid = False
    if not valid:
        return f"invalid cron expression {expression!r}"
    try:
        probe = datetime(2024, 1, 1, tzinfo=UTC)
        first = [croniter(expression, probe).get_next(datetime) for _ in range(2)]
    except Exception:
        return f"cron expression {expression!r} never fires"
    if first[0] != first[1]:
        return f"cron expression {expression!r} is not deterministic"
    return None


def valid_cron(expression: str) -> bool:
    return cron_problem(expression) is None


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


def skipped_between(schedule: Schedule, nominal: datetime, following: datetime, limit: int) -> list[datetime]:
    """The occurrences `advance` jumped over between `nominal` and `following` (both excluded),
    at most `limit` of them (the earliest)."""
    skipped: list[datetime] = []
    if schedule.interval is not None:
        count = max(0, math.ceil((following - nominal) / schedule.interval) - 1)
        return [nominal + k * schedule.interval for k in range(1, min(count, limit) + 1)]
    occurrence = next_occurrence(schedule, nominal)
    while occurrence < following and len(skipped) < limit:
        skipped.append(occurrence)
        occurrence = next_occurrence(schedule, occurrence)
    return skipped


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
    """A task that may start now; `period` is the time between its occurrences and
    `passed_over_since` when it was first ready but left waiting for another task."""

    task_id: int
    priority: int
    fire_at: datetime
    period: timedelta | None = None
    passed_over_since: datetime | None = None

    def starving(self, now: datetime) -> bool:
        """Kept waiting by other tasks for a whole period of its own."""
        since = self.passed_over_since
        return since is not None and self.period is not None and now - since >= self.period


def period_of(schedule: Schedule, at: datetime) -> timedelta:
    """The time from the occurrence at `at` to the next one."""
    if schedule.interval is not None:
        return schedule.interval
    return next_occurrence(schedule, at) - at


def dispatch_order(candidates: Iterable[Candidate], now: datetime) -> list[Candidate]:
    """Tasks due by `now` before those only inside the early-wake horizon; among the due ones,
    those kept waiting by other tasks for a whole period of their own first (longest waiting
    first), then by priority (higher first), then the earlier due time, then the lower id.

    A task started early holds the bot while it waits for its instant, so letting a merely
    upcoming high-priority task outrank an overdue one would starve the overdue one whenever the
    high-priority task recurs faster than the horizon. Likewise, when a bot's exclusive tasks
    together take longer than the shortest interval, the highest-priority ones are always due
    again first: ageing a task passed over for a full period ahead of them keeps every task running.
    (A task merely due long ago, say after a stop, is not starving: priority decides.)
    """

    def key(c: Candidate) -> tuple[bool, bool, int, datetime, datetime, int]:
        starving = c.fire_at <= now and c.starving(now)
        oldest = c.passed_over_since if starving and c.passed_over_since else c.fire_at
        return (c.fire_at > now, not starving, 0 if starving else -c.priority, oldest, c.fire_at, c.task_id)

    return sorted(candidates, key=key)


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


def retry_delay(task: TaskPlan, failures: int) -> timedelta:
    """The backoff after the run's `failures`-th failed attempt: `retry_delay_minutes`, growing by
    `retry_backoff_coefficient`, capped at `max_retry_delay_minutes` (never below the first)."""
    initial = task.retry_delay_minutes * 60
    cap = max(initial, task.max_retry_delay_minutes * 60)
    exponent = min(max(failures - 1, 0), 200)  # beyond that the cap wins anyway; no float overflow
    return timedelta(seconds=min(initial * task.retry_backoff_coefficient**exponent, cap))


def loss_delay(losses: int) -> timedelta:
    """How long to wait before starting again an attempt whose worker vanished."""
    if losses <= 1:
        return timedelta(0)
    return min(timedelta(seconds=2 ** (losses - 2)), MAX_LOSS_DELAY)


def is_final_failure(task: TaskPlan, failures: int) -> bool:
    """Whether failure number `failures` of a run spends its budget of `max_retries` retries."""
    return failures > task.max_retries


def start_to_close(task: TaskPlan, early_wake: timedelta) -> timedelta:
    """The due wait, the lock wait and the handler (each up to the task's timeout), plus bookkeeping."""
    return 2 * timedelta(seconds=task.timeout_seconds) + early_wake + BOOKKEEPING_ALLOWANCE
