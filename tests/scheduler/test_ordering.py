"""Which task runs when: priorities, no overlap, dependencies, lock keys across bots, cron."""

from __future__ import annotations

import itertools
from datetime import timedelta

import asyncpg
from temporalio.testing import WorkflowEnvironment

from tests.scheduler.helpers import (
    ScriptedHandler,
    advance,
    event_actions,
    executions,
    handlers_with,
    insert_bot,
    insert_task,
    keep_history,
    running_worker,
    start_bot,
    status,
)


async def test_due_tasks_run_one_at_a_time_in_priority_order(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    handler = ScriptedHandler(default="nap", nap_seconds=0.05)
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    low = await insert_task(pool, bot, "scripted", priority=1, next_planned_run_at=now)
    high = await insert_task(pool, bot, "scripted", priority=10, next_planned_run_at=now)
    middle = await insert_task(pool, bot, "scripted", priority=5, next_planned_run_at=now)
    # Due earlier but lower priority: priority wins among due tasks.
    early = await insert_task(pool, bot, "scripted", priority=0, next_planned_run_at=now - timedelta(hours=1))
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        handle = await start_bot(env.client, bot, task_queue)
        await advance(env, timedelta(seconds=30))
        assert handler.order() == [high, middle, low, early]
        assert handler.max_running == 1
        current = await status(handle)
        assert [t.id for t in current.tasks] == [high, middle, low, early]
        assert all(t.lastSuccessAt is not None and t.state == "scheduled" for t in current.tasks)
        assert event_actions(current)[:2] == [(high, "started"), (high, "completed")]
        await keep_history(handle, "priority_order")


async def test_stale_dependency_runs_first_and_a_fresh_one_does_not_rerun(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    handler = ScriptedHandler()
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    # The dependency is not due for a day, but it never ran: it is stale when the dependent is due.
    dependency = await insert_task(
        pool, bot, "scripted", interval_minutes=10, next_planned_run_at=now + timedelta(days=1)
    )
    dependent = await insert_task(
        pool, bot, "scripted", priority=5, dependencies=[dependency], next_planned_run_at=now
    )
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        handle = await start_bot(env.client, bot, task_queue)
        await advance(env, timedelta(minutes=3, seconds=30))
        # Dependency first, then the dependent every minute while the dependency stays fresh.
        assert handler.order() == [dependency, dependent, dependent, dependent, dependent]
        # Running it for the dependent did not move the dependency's own schedule.
        current = await status(handle)
        dep_status = next(t for t in current.tasks if t.id == dependency)
        assert dep_status.nextDueAt == now + timedelta(days=1)
        await advance(env, timedelta(minutes=8))
        # Ten minutes after its run the dependency is stale again and runs before the dependent.
        order = handler.order()
        assert order.count(dependency) == 2
        second = order.index(dependency, 1)
        assert order[second + 1] == dependent
        await keep_history(handle, "dependencies")


async def test_failing_dependency_skips_the_dependent_and_says_why(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    dependency = await insert_task(
        pool, bot, "scripted", max_retries=0, interval_minutes=60, next_planned_run_at=now + timedelta(days=1)
    )
    dependent = await insert_task(pool, bot, "scripted", dependencies=[dependency], next_planned_run_at=now)
    handler = ScriptedHandler(script={dependency: ["fatal"]})
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        handle = await start_bot(env.client, bot, task_queue)
        await advance(env, timedelta(seconds=30))
        assert handler.order() == [dependency]
        rows = await executions(pool, bot, dependent)
        assert [row["status"] for row in rows] == ["skipped"]
        assert "dependency" in rows[0]["error_message"] and "failed" in rows[0]["error_message"]
        planned = await pool.fetchval(
            "SELECT next_planned_run_at FROM bot_task_definitions WHERE id = $1", dependent
        )
        assert planned == now + timedelta(minutes=1)  # rescheduled, on its own phase
        assert (dependent, "skipped") in event_actions(await status(handle))
        # At the next occurrence the dependency gets another chance; it succeeds, so both run.
        await advance(env, timedelta(minutes=1))
        assert handler.order() == [dependency, dependency, dependent]


async def test_lock_key_serializes_tasks_of_different_bots(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    handler = ScriptedHandler(default="nap", nap_seconds=0.3)
    now = await env.get_current_time()
    bots = [await insert_bot(pool) for _ in range(2)]
    for bot in bots:
        await insert_task(pool, bot, "scripted", lock_key="shared-account", next_planned_run_at=now)
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        for bot in bots:
            await start_bot(env.client, bot, task_queue)
        await advance(env, timedelta(minutes=2, seconds=30))
    assert len(handler.calls) == 6
    assert handler.max_running == 1


async def test_without_lock_key_different_bots_overlap(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    """The control for the lock-key test: bots are independent unless they share a key."""
    handler = ScriptedHandler(default="nap", nap_seconds=0.5)
    now = await env.get_current_time()
    bots = [await insert_bot(pool) for _ in range(2)]
    for bot in bots:
        await insert_task(pool, bot, "scripted", next_planned_run_at=now)
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        for bot in bots:
            await start_bot(env.client, bot, task_queue)
        await advance(env, timedelta(seconds=30))
    assert handler.max_running == 2


async def test_cron_definitions_run_on_their_expression(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    handler = ScriptedHandler()
    bot = await insert_bot(pool)
    task = await insert_task(pool, bot, "scripted", cron_expression="*/5 * * * *")
    now = await env.get_current_time()
    first = now.replace(second=0, microsecond=0) + timedelta(minutes=5 - now.minute % 5)
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        handle = await start_bot(env.client, bot, task_queue)
        await advance(env, first - now + timedelta(minutes=10, seconds=30))
        due_times = [call.due_at for call in handler.calls_of(task)]
        assert len(due_times) == 3 and due_times[0] == first
        assert all(due.minute % 5 == 0 and due.second == 0 and due.microsecond == 0 for due in due_times)
        assert [b - a for a, b in itertools.pairwise(due_times)] == [timedelta(minutes=5)] * 2
        await keep_history(handle, "cron")


async def test_jitter_delays_each_run_without_moving_the_schedule(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    handler = ScriptedHandler()
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    task = await insert_task(pool, bot, "scripted", jitter_seconds=40, next_planned_run_at=now)
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        await start_bot(env.client, bot, task_queue)
        await advance(env, timedelta(minutes=5, seconds=50))
    offsets = [
        call.due_at - (now + index * timedelta(minutes=1))
        for index, call in enumerate(handler.calls_of(task))
    ]
    assert len(offsets) == 6
    assert all(timedelta(0) <= offset < timedelta(seconds=40) for offset in offsets)
    assert len(set(offsets)) > 1  # drawn afresh for each occurrence
    planned = await pool.fetchval("SELECT next_planned_run_at FROM bot_task_definitions WHERE id = $1", task)
    assert planned == now + timedelta(minutes=6)  # nominal times stay on the minute phase
