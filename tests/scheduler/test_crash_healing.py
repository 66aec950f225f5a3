"""Executions left `started` by a dead worker are closed as failed with a reason; none stay open."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

import asyncpg
import pytest
from temporalio.testing import WorkflowEnvironment

from tests.scheduler.helpers import (
    TEST_OPTIONS,
    ScriptedHandler,
    definition,
    executions,
    insert_bot,
    insert_task,
    running_worker,
    start_bot,
    status,
)
from tests.support.waiting import eventually

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.system  # a worker subprocess, SIGKILLed
async def test_attempts_of_a_killed_worker_are_closed_and_retried(
    env: WorkflowEnvironment, pool: asyncpg.Pool, database_url: str, task_queue: str
) -> None:
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    # Both run at once on the doomed worker; one may retry, the other has no retries left.
    retried = await insert_task(
        pool,
        bot,
        "hang",
        allow_overlap=True,
        max_retries=1,
        retry_delay_minutes=0.01,
        interval_minutes=60,
        next_planned_run_at=now,
    )
    final = await insert_task(
        pool, bot, "hang", allow_overlap=True, max_retries=0, interval_minutes=60, next_planned_run_at=now
    )
    address = env.client.service_client.config.target_host
    doomed = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.scheduler.crash_worker",
        address,
        task_queue,
        database_url,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert doomed.stdout is not None
        assert (await asyncio.wait_for(doomed.stdout.readline(), 60)).strip() == b"ready"
        handle = await start_bot(env.client, bot, task_queue, TEST_OPTIONS)
        await eventually(
            lambda: executions(pool, bot),
            lambda rows: len([r for r in rows if r["status"] == "started"]) == 2,
            60,
        )
    finally:
        if doomed.returncode is None:
            doomed.send_signal(signal.SIGKILL)
        await doomed.wait()
    handler = ScriptedHandler()
    async with running_worker(env.client, pool, task_queue, {"hang": handler}):
        # Heartbeats stop; Temporal times the attempts out (in real time: the test server does not
        # skip time while an attempt is outstanding) and retries the one that may retry.
        rows = await eventually(
            lambda: executions(pool, bot),
            lambda rows: all(r["status"] != "started" for r in rows) and len(rows) == 4,
            60,
        )
        # Core v2: a lost attempt is not the task's failure. Each task's attempt 1 is closed
        # `lost`, attempt 2 starts at once (no retry delay) and completes, even for the task with
        # no retries left, and no failure is counted.
        for task in (retried, final):
            first, second = [r for r in rows if r["task_definition_id"] == task]
            assert (first["attempt_number"], first["status"]) == (1, "lost")
            assert "worker lost" in first["error_message"]
            assert (second["attempt_number"], second["status"]) == (2, "completed")
            assert second["started_at"] - first["completed_at"] < timedelta(seconds=5)
            assert (await definition(pool, task))["consecutive_failures"] == 0
        current = await eventually(lambda: status(handle), lambda s: not s.runningTasks)
        assert {t.id: t.consecutiveFailures for t in current.tasks} == {retried: 0, final: 0}


async def test_started_rows_of_an_earlier_run_are_closed_when_the_plan_loads(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    bot = await insert_bot(pool)
    task = await insert_task(pool, bot, "scripted", interval_minutes=60)
    stale = await pool.fetchval(
        """
        INSERT INTO bot_task_executions (bot_id, task_definition_id, task_type, status, execution_key)
        VALUES ($1, $2, 'scripted', 'started', $3) RETURNING id
        """,
        bot,
        task,
        f"{bot}/an-old-run/task-{task}-0-1/1",
    )
    async with running_worker(env.client, pool, task_queue, {"scripted": ScriptedHandler()}):
        handle = await start_bot(env.client, bot, task_queue)
        current = await eventually(lambda: status(handle), lambda s: len(s.tasks) == 1)
    row = await pool.fetchrow("SELECT * FROM bot_task_executions WHERE id = $1", stale)
    assert row["status"] == "lost" and "worker lost" in row["error_message"]
    assert any(e.type == "log" and "lost worker" in e.data["content"] for e in current.recentEvents)
