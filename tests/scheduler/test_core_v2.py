"""Regression tests for the ordinary operations that used to break the scheduler (core v2 issue).

Each was seen failing on the pre-v2 scheduler: a definition deleted mid-run stopped the bot, a
`next_planned_run_at` edit on a running bot was ignored and overwritten, a lock wait longer than
the pool's statement timeout lost the occurrence, continue-as-new waited out retry cycles, and
bookkeeping repeated by an activity retry counted twice.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.bookkeeping import SchedulerActivities
from tests.scheduler.helpers import (
    TEST_OPTIONS,
    ScriptedHandler,
    advance,
    definition,
    executions,
    handlers_with,
    insert_bot,
    insert_task,
    running_worker,
    start_bot,
    status,
)
from tests.support.waiting import eventually
from workflows.models import SIGNAL_RELOAD_TASKS, SIGNAL_STOP, SettleAttemptInput, SkipInput
from xbot.settings import load_settings
from xbot.storage.pool import create_pool
from xbot.task_definitions import TaskDefinitionPatch, delete_task_definition, update_task_definition

KEY_LOCK_NAMESPACE = 0x78620002


async def workflow_task_failures(handle: WorkflowHandle[Any, Any]) -> int:
    history = await handle.fetch_history()
    return sum(1 for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)


async def test_deleting_a_running_task_cancels_its_run_and_the_bot_goes_on(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    doomed = await insert_task(pool, bot, "scripted", allow_overlap=True, next_planned_run_at=now)
    deactivated = await insert_task(pool, bot, "scripted", allow_overlap=True, next_planned_run_at=now)
    steady = await insert_task(pool, bot, "scripted", interval_minutes=1, next_planned_run_at=now)
    handler = ScriptedHandler(script={doomed: ["sleep"], deactivated: ["sleep"]}, sleep_seconds=120)
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        handle = await start_bot(env.client, bot, task_queue)
        await eventually(lambda: asyncio.sleep(0, handler.running), lambda running: running >= 2)
        assert await delete_task_definition(pool, bot, doomed)
        await update_task_definition(
            pool, bot, deactivated, TaskDefinitionPatch(is_active=False), allow_private_urls=True
        )
        await handle.signal(SIGNAL_RELOAD_TASKS)
        rows = await eventually(
            lambda: executions(pool, bot),
            lambda rows: sum(r["status"] == "cancelled" for r in rows) == 2,
        )
        cancelled = [r for r in rows if r["status"] == "cancelled"]
        assert all("deleted or deactivated" in r["error_message"] for r in cancelled)
        # The rest of the bot goes on: the steady task keeps its minute.
        before = len(handler.calls_of(steady))
        await advance(env, timedelta(minutes=3))
        assert len(handler.calls_of(steady)) >= before + 3
        current = await status(handle)
        assert {t.id for t in current.tasks} == {steady}
        assert await workflow_task_failures(handle) == 0


@dataclass
class InFlight:
    bot: str
    task: int
    now: datetime
    handler: ScriptedHandler
    handle: WorkflowHandle[Any, Any]


@asynccontextmanager
async def first_run_in_flight(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> AsyncIterator[InFlight]:
    """A running bot with an hourly task due now, whose first run (a 1 s nap) has started."""
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    task = await insert_task(pool, bot, "scripted", interval_minutes=60, next_planned_run_at=now)
    handler = ScriptedHandler(script={task: ["nap"]}, nap_seconds=1.0)
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        handle = await start_bot(env.client, bot, task_queue)
        await handler.started.wait()
        yield InFlight(bot, task, now, handler, handle)


async def test_an_edit_of_next_planned_run_at_moves_the_next_run_at_once(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    async with first_run_in_flight(env, pool, task_queue) as run:
        bot, task, now, handler, handle = run.bot, run.task, run.now, run.handler, run.handle
        # While the first run is still in flight, the operator moves the next run 5 minutes out.
        wanted = now + timedelta(minutes=5)
        await update_task_definition(
            pool, bot, task, TaskDefinitionPatch(next_planned_run_at=wanted), allow_private_urls=True
        )
        await handle.signal(SIGNAL_RELOAD_TASKS)
        await eventually(
            lambda: status(handle), lambda s: s.tasks[0].nextDueAt == wanted and not s.runningTasks
        )
        # The run that was in flight completed without writing back its own plan (now + 60 min).
        assert (await definition(pool, task))["next_planned_run_at"] == wanted
        await advance(env, timedelta(minutes=6))
        assert [call.due_at for call in handler.calls_of(task)] == [now, wanted]


async def test_an_interval_edit_applies_at_once_and_is_not_undone_by_the_run_in_flight(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    async with first_run_in_flight(env, pool, task_queue) as run:
        bot, task, handler, handle = run.bot, run.task, run.handler, run.handle
        await update_task_definition(
            pool, bot, task, TaskDefinitionPatch(interval_minutes=2), allow_private_urls=True
        )
        await handle.signal(SIGNAL_RELOAD_TASKS)
        await eventually(lambda: status(handle), lambda s: not s.runningTasks)
        await advance(env, timedelta(minutes=7))
        # Every 2 minutes from the last start, not once an hour.
        assert len(handler.calls_of(task)) >= 4


async def test_a_lock_wait_longer_than_the_statement_timeout_waits_and_runs(
    env: WorkflowEnvironment, pool: asyncpg.Pool, database_url: str, task_queue: str
) -> None:
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    await insert_task(
        pool, bot, "scripted", lock_key="shared", max_retries=0, timeout_seconds=60, next_planned_run_at=now
    )
    handler = ScriptedHandler()
    # The worker's pool gives up on any statement after 1 s; the lock wait has its own bound.
    short_pool = await create_pool(database_url, min_size=1, max_size=5, command_timeout=1)
    holder = await asyncpg.connect(database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1, hashtext('shared'))", KEY_LOCK_NAMESPACE)
        async with running_worker(env.client, short_pool, task_queue, handlers_with(handler)):
            handle = await start_bot(env.client, bot, task_queue)
            rows = await eventually(
                lambda: executions(pool, bot), lambda r: bool(r) and r[0]["status"] == "waiting_lock"
            )
            assert "shared" in rows[0]["error_message"]
            current = await eventually(lambda: status(handle), lambda s: s.tasks[0].state == "waiting_lock")
            assert "shared" in (current.tasks[0].stateReason or "")
            await asyncio.sleep(3)  # three times the statement timeout
            await holder.execute("SELECT pg_advisory_unlock_all()")
            rows = await eventually(lambda: executions(pool, bot), lambda r: r[0]["status"] == "completed")
            assert len(rows) == 1 and len(handler.calls) == 1
    finally:
        await holder.close()
        await short_pool.close()


async def test_a_lock_wait_past_the_task_timeout_fails_the_attempt_with_a_row(
    env: WorkflowEnvironment, pool: asyncpg.Pool, database_url: str, task_queue: str
) -> None:
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    task = await insert_task(
        pool, bot, "scripted", lock_key="busy", max_retries=0, timeout_seconds=2, next_planned_run_at=now
    )
    holder = await asyncpg.connect(database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1, hashtext('busy'))", KEY_LOCK_NAMESPACE)
        async with running_worker(env.client, pool, task_queue, handlers_with(ScriptedHandler())):
            await start_bot(env.client, bot, task_queue)
            rows = await eventually(
                lambda: executions(pool, bot), lambda r: bool(r) and r[0]["status"] == "failed"
            )
            assert "not acquired within" in rows[0]["error_message"]
            assert (await definition(pool, task))["consecutive_failures"] == 1
    finally:
        await holder.close()


async def test_bots_sharing_a_lock_key_with_a_small_pool_do_not_deadlock(
    env: WorkflowEnvironment, pool: asyncpg.Pool, database_url: str, task_queue: str
) -> None:
    handler = ScriptedHandler(default="nap", nap_seconds=0.02)
    now = await env.get_current_time()
    bots = [await insert_bot(pool) for _ in range(25)]
    for bot in bots:
        await insert_task(
            pool, bot, "scripted", lock_key="everyone", interval_minutes=60, next_planned_run_at=now
        )
    small = await create_pool(database_url, min_size=1, max_size=4)
    locks = await create_pool(database_url, min_size=0, max_size=25, command_timeout=None)
    try:
        async with running_worker(env.client, small, task_queue, handlers_with(handler), lock_pool=locks):
            for bot in bots:
                await start_bot(env.client, bot, task_queue)
            rows = await eventually(
                lambda: pool.fetch("SELECT status FROM bot_task_executions"),
                lambda rows: len(rows) == 25 and all(r["status"] == "completed" for r in rows),
                timeout=120,
            )
            assert len(rows) == 25 and handler.max_running == 1
    finally:
        await small.close()
        await locks.close()


async def test_continue_as_new_does_not_wait_for_a_retry_cycle(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    flaky = await insert_task(
        pool,
        bot,
        "scripted",
        interval_minutes=600,
        max_retries=3,
        retry_delay_minutes=30,
        next_planned_run_at=now,
    )
    steady = await insert_task(pool, bot, "scripted", interval_seconds=30, next_planned_run_at=now)
    handler = ScriptedHandler(script={flaky: ["fail", "fail"]})
    options = TEST_OPTIONS.model_copy(update={"continue_after_events": 150, "drain_after_events": 300})
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        handle = await start_bot(env.client, bot, task_queue, options)
        first_run = (await handle.describe()).run_id
        await advance(env, timedelta(minutes=100), step=timedelta(minutes=5))
        # It continued as new while the flaky task waited 30 and 60 minutes to retry, and the
        # retries happened on time in the continued runs.
        assert (await handle.describe()).run_id != first_run
        rows = await executions(pool, bot, flaky)
        assert [(r["attempt_number"], r["status"]) for r in rows] == [
            (1, "retrying"),
            (2, "retrying"),
            (3, "completed"),
        ]
        gaps = [
            (b["started_at"] - a["started_at"]) / timedelta(minutes=1) for a, b in itertools.pairwise(rows)
        ]
        assert [round(gap) for gap in gaps] == [30, 60]
        assert len(handler.calls_of(steady)) >= 150


async def test_stop_during_backoff_closes_the_retrying_row_as_cancelled(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    task = await insert_task(
        pool, bot, "scripted", max_retries=3, retry_delay_minutes=10, next_planned_run_at=now
    )
    handler = ScriptedHandler(script={task: ["fail"]})
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        handle = await start_bot(env.client, bot, task_queue)
        await eventually(lambda: executions(pool, bot), lambda r: bool(r) and r[0]["status"] == "retrying")
        await handle.signal(SIGNAL_STOP)
        rows = await eventually(lambda: executions(pool, bot), lambda r: r[0]["status"] == "cancelled")
        assert "stopped" in rows[0]["error_message"]
        await advance(env, timedelta(minutes=30))
        assert len(handler.calls) == 1


async def test_bookkeeping_repeated_by_an_activity_retry_changes_nothing(pool: asyncpg.Pool) -> None:
    bot = await insert_bot(pool)
    task = await insert_task(pool, bot, "scripted", error_threshold=10)
    activities = SchedulerActivities(pool, load_settings(), "test")
    env = ActivityEnvironment()
    due = datetime.now(UTC)
    settle = SettleAttemptInput(
        bot_id=bot,
        task_id=task,
        task_type="scripted",
        execution_key=f"{bot}/c/1/1",
        attempt=1,
        due_at=due,
        status="failed",
        reason="boom",
    )
    first = await env.run(activities.settle_task_attempt, settle)
    again = await env.run(activities.settle_task_attempt, settle)
    assert first.execution_id == again.execution_id
    assert (await definition(pool, task))["consecutive_failures"] == 1
    skip = SkipInput(
        bot_id=bot,
        task_id=task,
        task_type="scripted",
        execution_key=f"{bot}/c/2/skip",
        due_at=due,
        reason="busy",
    )
    one = await env.run(activities.record_skipped_occurrence, skip)
    two = await env.run(activities.record_skipped_occurrence, skip)
    assert one.execution_id == two.execution_id
    assert len(await executions(pool, bot)) == 2
    # A lost attempt's settle never reopens a row its runner closed.
    lost = settle.model_copy(update={"status": "lost", "reason": "worker lost"})
    result = await env.run(activities.settle_task_attempt, lost)
    assert result.outcome == "failed" and result.final
    assert (await definition(pool, task))["consecutive_failures"] == 1
