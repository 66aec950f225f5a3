"""The real BotScheduler workflow with its activities faked by name (as temporalio/samples-python does).

No database and no task runner: stand-ins registered under the real activity names serve a plan from
memory and record every attempt the workflow dispatches, so the workflow's own decisions (due
instants, retries and their backoff, priority order) are checked in a fraction of a second of wall
time on the time-skipping server. The same behaviours are tested with the real activities and
PostgreSQL in `test_core_v2.py`, `test_failures.py` and `test_ordering.py`.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from temporalio import activity
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from launch.worker import WORKFLOW_RUNNER
from tests.scheduler.helpers import TEST_OPTIONS
from tests.support.schedulers import start_scheduler
from workflows.bot_scheduler import BotScheduler
from workflows.models import (
    ACTIVITY_LOAD_PLAN,
    ACTIVITY_RECORD_SKIP,
    ACTIVITY_RUN_ATTEMPT,
    ACTIVITY_SET_PAUSED,
    ACTIVITY_SETTLE_ATTEMPT,
    SIGNAL_STOP,
    AttemptRequest,
    AttemptResult,
    BotPlan,
    LoadPlanInput,
    SetPausedInput,
    SettleAttemptInput,
    SkipInput,
    TaskPlan,
)


@dataclass
class FakeStore:
    """The activities' side of the contract, in memory: a plan, scripted outcomes, the attempts seen."""

    tasks: list[TaskPlan]
    # Per task id, the outcomes of its next attempts ("fail" or "ok"); "ok" once the script runs out.
    script: dict[int, list[str]] = field(default_factory=dict)
    attempts: list[AttemptRequest] = field(default_factory=list)

    @activity.defn(name=ACTIVITY_LOAD_PLAN)
    async def load_bot_plan(self, request: LoadPlanInput) -> BotPlan:
        return BotPlan(bot_id=request.bot_id, tasks=self.tasks)

    @activity.defn(name=ACTIVITY_RUN_ATTEMPT)
    async def run_task_attempt(self, request: AttemptRequest) -> AttemptResult:
        self.attempts.append(request)
        finished = max(activity.info().started_time, request.fire_at)
        outcomes = self.script.get(request.task_id) or []
        if outcomes and outcomes.pop(0) == "fail":
            return AttemptResult(
                outcome="failed", finished_at=finished, final=request.final, reason="scripted"
            )
        return AttemptResult(outcome="completed", finished_at=finished, last_success_at=finished)

    @activity.defn(name=ACTIVITY_RECORD_SKIP)
    async def record_skipped_occurrence(self, request: SkipInput) -> AttemptResult:
        return AttemptResult(outcome="cancelled", finished_at=request.due_at, reason=request.reason)

    @activity.defn(name=ACTIVITY_SET_PAUSED)
    async def set_task_paused(self, request: SetPausedInput) -> None:
        return None

    @activity.defn(name=ACTIVITY_SETTLE_ATTEMPT)
    async def settle_task_attempt(self, request: SettleAttemptInput) -> AttemptResult:
        return AttemptResult(outcome="lost", finished_at=request.due_at, reason=request.reason)

    def of(self, task_id: int) -> list[AttemptRequest]:
        return [attempt for attempt in self.attempts if attempt.task_id == task_id]


async def run_for(env: WorkflowEnvironment, store: FakeStore, skip: timedelta) -> None:
    """Run the bot on the faked activities, skip `skip` of workflow time, then stop it."""
    task_queue = f"fakes-{uuid.uuid4().hex[:8]}"
    bot_id = f"bot-{uuid.uuid4().hex[:10]}"
    activities = [
        store.load_bot_plan,
        store.run_task_attempt,
        store.record_skipped_occurrence,
        store.set_task_paused,
        store.settle_task_attempt,
    ]
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[BotScheduler],
        activities=activities,
        workflow_runner=WORKFLOW_RUNNER,
    ):
        handle = await start_scheduler(env.client, bot_id, task_queue, TEST_OPTIONS)
        await env.sleep(skip)
        await handle.signal(SIGNAL_STOP)
        await env.sleep(timedelta(seconds=1))


async def now(env: WorkflowEnvironment) -> datetime:
    return await env.get_current_time()


async def test_an_interval_task_is_dispatched_at_each_due_instant(env: WorkflowEnvironment) -> None:
    first = (await now(env)) + timedelta(minutes=1)
    store = FakeStore([TaskPlan(id=1, task_type="noop", interval_seconds=60, next_planned_run_at=first)])

    await run_for(env, store, timedelta(minutes=5, seconds=30))

    due = [attempt.due_at for attempt in store.of(1)]
    assert len(due) >= 5
    assert due[0] == first
    assert all(later - earlier == timedelta(seconds=60) for earlier, later in itertools.pairwise(due))
    assert all(attempt.attempt == 1 and attempt.trigger == "schedule" for attempt in store.of(1))
    assert all(attempt.fire_at >= attempt.due_at for attempt in store.of(1))


async def test_a_failing_run_is_retried_with_backoff_until_its_budget_is_spent(
    env: WorkflowEnvironment,
) -> None:
    first = (await now(env)) + timedelta(seconds=10)
    task = TaskPlan(
        id=7,
        task_type="noop",
        interval_seconds=3600,
        next_planned_run_at=first,
        max_retries=2,
        retry_delay_minutes=1,
        retry_backoff_coefficient=2,
    )
    store = FakeStore([task], script={7: ["fail", "fail", "fail"]})

    await run_for(env, store, timedelta(minutes=10))

    run = [attempt for attempt in store.of(7) if attempt.due_at == first]
    assert [attempt.attempt for attempt in run] == [1, 2, 3]
    # One execution key per attempt, all of one run; only the last attempt spends the budget.
    assert len({attempt.execution_key for attempt in run}) == 3
    assert [attempt.final for attempt in run] == [False, False, True]
    waits = [later.dispatched_at - earlier.dispatched_at for earlier, later in itertools.pairwise(run)]
    assert waits[0] >= timedelta(minutes=1)
    assert waits[1] >= timedelta(minutes=2)
    # Given up: the next attempt is the next occurrence's, an hour later.
    later_runs = [attempt for attempt in store.of(7) if attempt.due_at != first]
    assert all(attempt.due_at >= first + timedelta(hours=1) for attempt in later_runs)


async def test_of_two_exclusive_tasks_due_together_the_higher_priority_goes_first(
    env: WorkflowEnvironment,
) -> None:
    due = (await now(env)) + timedelta(seconds=30)
    tasks = [
        TaskPlan(id=1, task_type="noop", interval_seconds=3600, priority=1, next_planned_run_at=due),
        TaskPlan(id=2, task_type="noop", interval_seconds=3600, priority=9, next_planned_run_at=due),
    ]
    store = FakeStore(tasks)

    await run_for(env, store, timedelta(minutes=2))

    assert [attempt.task_id for attempt in store.attempts[:2]] == [2, 1]
