"""Control signals: stop/start, reload_tasks, run_task, pause/resume, and continue-as-new."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import asyncpg
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from tests.scheduler.helpers import (
    TEST_OPTIONS,
    ScriptedHandler,
    advance,
    definition,
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
from tests.support.waiting import eventually
from workflows.models import (
    SIGNAL_PAUSE_TASK,
    SIGNAL_RELOAD_TASKS,
    SIGNAL_RESUME_TASK,
    SIGNAL_RUN_TASK,
    SIGNAL_START,
    SIGNAL_STOP,
    TaskIdArg,
)


async def test_stop_cancels_the_running_task_and_start_resumes(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    task = await insert_task(pool, bot, "scripted", next_planned_run_at=now)
    handler = ScriptedHandler(script={task: ["sleep"]}, sleep_seconds=120)
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        handle = await start_bot(env.client, bot, task_queue)
        await handler.started.wait()
        await handle.signal(SIGNAL_STOP)
        rows = await eventually(lambda: executions(pool, bot, task), lambda r: r[0]["status"] != "started")
        assert rows[0]["status"] == "cancelled"
        stopped = await eventually(lambda: status(handle), lambda s: not s.runningTasks)
        assert not stopped.isRunning and stopped.nextAlarmTime is None
        assert (task, "cancelled") in event_actions(stopped)
        # Stopped: nothing starts, however long we wait, and no timer is left behind.
        await advance(env, timedelta(hours=3))
        assert len(handler.calls) == 1
        history = await handle.fetch_history()
        stop_at = max(
            e.event_id
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        )
        timers_after_stop = [
            e
            for e in history.events
            if e.event_id > stop_at and e.event_type == EventType.EVENT_TYPE_TIMER_STARTED
        ]
        assert timers_after_stop == []
        # Start resumes: the occurrence that was cancelled runs again at once, then every minute.
        await handle.signal(SIGNAL_START)
        await advance(env, timedelta(minutes=2, seconds=30))
        assert len(handler.calls) == 4
        current = await status(handle)
        assert current.isRunning
        updates = [e.data["isRunning"] for e in current.recentEvents if e.type == "scheduler_status_update"]
        assert False in updates and updates[-1] is True
        await keep_history(handle, "stop_start")


async def test_start_is_idempotent(env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str) -> None:
    bot = await insert_bot(pool)
    await insert_task(pool, bot, "scripted")
    async with running_worker(env.client, pool, task_queue, handlers_with(ScriptedHandler())):
        first = await start_bot(env.client, bot, task_queue)
        second = await start_bot(env.client, bot, task_queue)
        assert first.result_run_id == second.result_run_id
        current = await eventually(lambda: status(second), lambda s: len(s.tasks) == 1)
        assert current.isRunning


async def test_reload_wakes_early_and_picks_up_new_and_removed_definitions(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    daily = await insert_task(
        pool, bot, "scripted", interval_minutes=24 * 60, next_planned_run_at=now + timedelta(days=1)
    )
    handler = ScriptedHandler()
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        handle = await start_bot(env.client, bot, task_queue)
        loaded = await eventually(lambda: status(handle), lambda s: len(s.tasks) == 1)
        assert loaded.nextAlarmTime == now + timedelta(days=1)
        await advance(env, timedelta(minutes=10))
        later = await env.get_current_time()
        frequent = await insert_task(pool, bot, "scripted", next_planned_run_at=later)
        await handle.signal(SIGNAL_RELOAD_TASKS)
        await advance(env, timedelta(seconds=30))
        assert handler.order() == [frequent]  # woke long before the daily task's timer
        await pool.execute("UPDATE bot_task_definitions SET is_active = false WHERE id = $1", daily)
        await handle.signal(SIGNAL_RELOAD_TASKS)
        current = await eventually(lambda: status(handle), lambda s: len(s.tasks) == 1)
        assert [t.id for t in current.tasks] == [frequent]
        assert current.nextAlarmTime == later + timedelta(minutes=1)
        await keep_history(handle, "reload")


async def test_run_task_runs_now_without_moving_the_schedule(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    planned = now + timedelta(hours=6)
    task = await insert_task(pool, bot, "scripted", interval_minutes=12 * 60, next_planned_run_at=planned)
    handler = ScriptedHandler()
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        handle = await start_bot(env.client, bot, task_queue)
        await advance(env, timedelta(minutes=5))
        await handle.signal(SIGNAL_RUN_TASK, TaskIdArg(task_id=task))
        await eventually(lambda: status(handle), lambda s: s.tasks[0].lastSuccessAt is not None)
        assert len(handler.calls) == 1
        current = await status(handle)
        assert current.tasks[0].nextDueAt == planned
        assert (await definition(pool, task))["next_planned_run_at"] == planned
        await keep_history(handle, "run_task")


async def test_run_task_for_a_definition_created_after_the_last_load(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    bot = await insert_bot(pool)
    handler = ScriptedHandler()
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        handle = await start_bot(env.client, bot, task_queue)
        assert (await status(handle)).tasks == []
        task = await insert_task(pool, bot, "scripted", interval_minutes=60)
        await handle.signal(SIGNAL_RUN_TASK, TaskIdArg(task_id=task))
        await eventually(lambda: executions(pool, bot, task), lambda rows: len(rows) == 1)
        assert handler.order() == [task]


async def test_a_signal_during_a_plan_load_is_acted_on(
    env: WorkflowEnvironment, pool: asyncpg.Pool, database_url: str, task_queue: str
) -> None:
    """run_task for a definition the running load cannot see yet must trigger another load.

    The load is held inside `load_bot_plan` (after it read the definitions, while it waits for
    `app_settings`) until the signal has been handled, so the race is hit every time.
    """
    bot = await insert_bot(pool)
    handler = ScriptedHandler()
    blocker = await asyncpg.connect(database_url)
    try:
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute("LOCK TABLE app_settings IN ACCESS EXCLUSIVE MODE")
        async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
            handle = await start_bot(env.client, bot, task_queue)
            await eventually(lambda: load_waiting_on_app_settings(pool), bool)
            task = await insert_task(pool, bot, "scripted", interval_minutes=60)
            await handle.signal(SIGNAL_RUN_TASK, TaskIdArg(task_id=task))
            await eventually(lambda: signal_handled(handle), bool)
            await blocking.rollback()  # the load finishes with a plan that lacks the task
            await eventually(lambda: executions(pool, bot, task), lambda rows: len(rows) == 1)
            # The row is written just before the handler is called.
            await asyncio.wait_for(handler.started.wait(), 30)
            assert handler.order() == [task]
            history = await handle.fetch_history()
            # Each load is a local activity: one marker naming `load_bot_plan` in the history.
            loads = [
                e
                for e in history.events
                if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
                and b"load_bot_plan" in e.SerializeToString()
            ]
            assert len(loads) == 2  # the held load missed the task; the signal asked for another
    finally:
        await blocker.close()


async def load_waiting_on_app_settings(pool: asyncpg.Pool) -> bool:
    waiting: int = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND query LIKE '%FROM app_settings%'"
    )
    return waiting > 0


async def signal_handled(handle: WorkflowHandle[Any, Any]) -> bool:
    """A workflow task completed after the last signal: its handler ran."""
    events = (await handle.fetch_history()).events
    signals = [e.event_id for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED]
    return any(
        e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED and e.event_id > signals[-1]
        for e in events
    )


async def test_pause_and_resume(env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str) -> None:
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    paused = await insert_task(pool, bot, "scripted", next_planned_run_at=now + timedelta(seconds=30))
    other = await insert_task(pool, bot, "scripted", next_planned_run_at=now + timedelta(seconds=40))
    handler = ScriptedHandler()
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        handle = await start_bot(env.client, bot, task_queue)
        await handle.signal(SIGNAL_PAUSE_TASK, TaskIdArg(task_id=paused))
        await eventually(lambda: definition(pool, paused), lambda row: row["is_paused"])
        await advance(env, timedelta(minutes=5))
        assert handler.calls_of(paused) == []
        assert len(handler.calls_of(other)) == 5
        current = await status(handle)
        assert {t.id: t.state for t in current.tasks}[paused] == "paused"
        await handle.signal(SIGNAL_RESUME_TASK, TaskIdArg(task_id=paused))
        await eventually(lambda: definition(pool, paused), lambda row: not row["is_paused"])
        await advance(env, timedelta(minutes=2))
        # The missed occurrence runs once on resume, then the minute phase continues.
        assert len(handler.calls_of(paused)) == 3
        actions = event_actions(await status(handle), "task_definition")
        assert actions == [(paused, "paused"), (paused, "resumed")]
        await keep_history(handle, "pause_resume")


async def test_continue_as_new_keeps_state_and_signals(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    every_minute = await insert_task(pool, bot, "scripted", next_planned_run_at=now)
    hourly = await insert_task(
        pool, bot, "scripted", interval_minutes=60, next_planned_run_at=now + timedelta(hours=1)
    )
    handler = ScriptedHandler(script={every_minute: ["fail"]})
    # Continue as new at every idle moment: every signal below arrives around a run change.
    options = TEST_OPTIONS.model_copy(update={"continue_after_events": 1})
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        handle = await start_bot(env.client, bot, task_queue, options)
        first_run = (await handle.describe()).run_id
        await advance(env, timedelta(minutes=1, seconds=30))
        await handle.signal(SIGNAL_PAUSE_TASK, TaskIdArg(task_id=every_minute))
        await handle.signal(SIGNAL_RUN_TASK, TaskIdArg(task_id=hourly))
        await eventually(lambda: status(handle), lambda s: s.tasks[1].lastSuccessAt is not None)
        runs_before_pause = len(handler.calls_of(every_minute))
        await advance(env, timedelta(minutes=3))
        current = await status(handle)
        by_id = {t.id: t for t in current.tasks}
        assert by_id[every_minute].state == "paused"
        assert by_id[every_minute].lastSuccessAt is not None
        assert by_id[hourly].nextDueAt == now + timedelta(hours=1)  # run_task left its schedule alone
        assert runs_before_pause >= 2  # the failure and its retry
        assert len(handler.calls_of(every_minute)) == runs_before_pause  # then paused
        assert len(handler.calls_of(hourly)) == 1
        # Events keep their numbering across runs; many runs have happened.
        seqs = [e.seq for e in current.recentEvents]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and current.lastEventSeq == seqs[-1]
        assert (await handle.describe()).run_id != first_run
        await handle.signal(SIGNAL_RESUME_TASK, TaskIdArg(task_id=every_minute))
        await advance(env, timedelta(minutes=1, seconds=5))
        assert len(handler.calls_of(every_minute)) > runs_before_pause
        assert (await status(handle)).isRunning
        await keep_history(handle, "continued_run")
