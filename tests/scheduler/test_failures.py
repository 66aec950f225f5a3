"""Retries with backoff, non-retryable errors, the error threshold and rate-limit postponement."""

from __future__ import annotations

import itertools
from datetime import timedelta

import asyncpg
from temporalio.testing import WorkflowEnvironment

from tests.scheduler.helpers import (
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


async def test_retries_back_off_exponentially_and_record_every_attempt(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    flaky = await insert_task(
        pool,
        bot,
        "scripted",
        interval_minutes=60,
        max_retries=3,
        retry_delay_minutes=1,
        retry_backoff_coefficient=2,
        next_planned_run_at=now,
    )
    # A steady task of the same bot keeps running while the flaky one waits in backoff.
    steady = await insert_task(pool, bot, "scripted", next_planned_run_at=now + timedelta(seconds=30))
    handler = ScriptedHandler(script={flaky: ["fail", "fail", "fail"]})
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        handle = await start_bot(env.client, bot, task_queue)
        await advance(env, timedelta(minutes=1, seconds=45))
        current = await status(handle)
        flaky_status = next(t for t in current.tasks if t.id == flaky)
        assert flaky_status.state == "retrying"
        assert flaky_status.stateReason is not None and "scripted failure" in flaky_status.stateReason
        await advance(env, timedelta(minutes=6))
        rows = await executions(pool, bot, flaky)
        assert [(r["attempt_number"], r["status"]) for r in rows] == [
            (1, "retrying"),
            (2, "retrying"),
            (3, "retrying"),
            (4, "completed"),
        ]
        assert all("scripted failure" in r["error_message"] for r in rows[:3])
        gaps = [b["started_at"] - a["started_at"] for a, b in itertools.pairwise(rows)]
        assert [round(gap / timedelta(minutes=1)) for gap in gaps] == [1, 2, 4]
        # The steady task ran every minute meanwhile: backoff held nothing up.
        assert len(handler.calls_of(steady)) >= 6
        assert handler.max_running == 1
        assert (await definition(pool, flaky))["consecutive_failures"] == 0
        assert (flaky, "retrying") in event_actions(await status(handle))
        await keep_history(handle, "retries")


async def test_non_retryable_error_fails_at_once(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    task = await insert_task(
        pool, bot, "scripted", max_retries=5, interval_minutes=30, next_planned_run_at=now
    )
    handler = ScriptedHandler(script={task: ["fatal"]})
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        handle = await start_bot(env.client, bot, task_queue)
        await advance(env, timedelta(minutes=10))
        rows = await executions(pool, bot, task)
        assert [(r["attempt_number"], r["status"]) for r in rows] == [(1, "failed")]
        assert "NonRetryableTaskError" in rows[0]["error_message"]
        saved = await definition(pool, task)
        assert saved["consecutive_failures"] == 1
        assert saved["next_planned_run_at"] == now + timedelta(minutes=30)
        task_status = (await status(handle)).tasks[0]
        assert task_status.consecutiveFailures == 1
        assert task_status.nextDueAt == now + timedelta(minutes=30)


async def test_unknown_task_type_fails_without_retrying(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    task = await insert_task(pool, bot, "not_registered", interval_minutes=30, next_planned_run_at=now)
    async with running_worker(env.client, pool, task_queue, handlers_with(ScriptedHandler())):
        await start_bot(env.client, bot, task_queue)
        await advance(env, timedelta(minutes=5))
    rows = await executions(pool, bot, task)
    assert [(r["attempt_number"], r["status"]) for r in rows] == [(1, "failed")]
    assert "no handler registered" in rows[0]["error_message"]


async def test_error_threshold_deactivates_and_success_resets_the_count(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    doomed = await insert_task(
        pool, bot, "scripted", max_retries=0, error_threshold=3, next_planned_run_at=now
    )
    recovering = await insert_task(
        pool,
        bot,
        "scripted",
        max_retries=0,
        error_threshold=3,
        next_planned_run_at=now + timedelta(seconds=20),
    )
    handler = ScriptedHandler(
        script={doomed: ["fail"] * 10, recovering: ["fail", "fail", "ok", "fail", "fail"]}
    )
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        handle = await start_bot(env.client, bot, task_queue)
        await advance(env, timedelta(minutes=5, seconds=30))
        assert len(handler.calls_of(doomed)) == 3  # never runs again once deactivated
        saved = await definition(pool, doomed)
        assert not saved["is_active"]
        assert saved["consecutive_failures"] == 3
        log = await pool.fetchrow(
            "SELECT * FROM logs WHERE bot_id = $1 AND content LIKE '%deactivated%'", bot
        )
        assert log is not None and f"#{doomed}" in log["content"] and log["level"] == "warn"
        current = await status(handle)
        assert [t.id for t in current.tasks] == [recovering]
        assert (doomed, "deactivated") in event_actions(current, "task_definition")
        log_events = [e.data for e in current.recentEvents if e.type == "log"]
        assert {"id": log["id"], "level": "warn"}.items() <= log_events[-1].items()
        # fail, fail, ok (count back to 0), fail, fail, ok: never three in a row.
        assert len(handler.calls_of(recovering)) == 6
        assert (await definition(pool, recovering))["is_active"]
        assert current.tasks[0].consecutiveFailures == 0
        await keep_history(handle, "error_threshold")


async def test_low_rate_limit_headroom_postpones_until_the_window_resets(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    reset_at = now + timedelta(minutes=10)
    await pool.execute(
        "INSERT INTO rate_limit_tracking (bot_id, endpoint, limit_total, remaining, reset_at)"
        " VALUES ($1, 'mentions', 10, 1, $2)",
        bot,
        reset_at,
    )
    task = await insert_task(
        pool,
        bot,
        "scripted",
        rate_limit_endpoint="mentions",
        min_rate_limit_remaining=2,
        interval_minutes=60,
        next_planned_run_at=now,
    )
    handler = ScriptedHandler()
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        handle = await start_bot(env.client, bot, task_queue)
        await advance(env, timedelta(minutes=3))
        assert handler.calls == []
        task_status = (await status(handle)).tasks[0]
        assert task_status.state == "rate_limited"
        assert task_status.nextDueAt == reset_at
        assert task_status.consecutiveFailures == 0
        rows = await executions(pool, bot, task)
        assert [(r["status"], r["rate_limit_remaining"]) for r in rows] == [("skipped", 1)]
        assert "postponed until" in rows[0]["error_message"]
        await advance(env, timedelta(minutes=8))
        assert len(handler.calls) == 1  # ran once the window reset
        assert (await executions(pool, bot, task))[-1]["status"] == "completed"
        task_status = (await status(handle)).tasks[0]
        assert task_status.state == "scheduled"
        assert task_status.nextDueAt == now + timedelta(minutes=60)  # the schedule kept its phase
        await keep_history(handle, "rate_limit")


async def test_rate_limited_error_from_a_handler_postpones_instead_of_failing(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    task = await insert_task(pool, bot, "scripted", interval_minutes=60, next_planned_run_at=now)
    handler = ScriptedHandler(script={task: ["rate_limited"]})  # resets 15 minutes after due
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        handle = await start_bot(env.client, bot, task_queue)
        await advance(env, timedelta(minutes=5))
        task_status = (await status(handle)).tasks[0]
        assert (task_status.state, task_status.nextDueAt) == ("rate_limited", now + timedelta(minutes=15))
        await advance(env, timedelta(minutes=11))
        rows = await executions(pool, bot, task)
        assert [r["status"] for r in rows] == ["skipped", "completed"]
        assert (await definition(pool, task))["consecutive_failures"] == 0
