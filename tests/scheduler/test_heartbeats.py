"""Heartbeats of a task attempt: none in its first period, then steady while it runs.

An attempt that ends within one period (most do) costs the server no heartbeat call; a long one
keeps beating, so a stop still reaches it and a dead worker is still noticed (the heartbeat
timeout runs from the attempt's start).
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import asyncpg
from temporalio.testing import WorkflowEnvironment

from activities.task_runner import Watchdog
from tests.scheduler.helpers import (
    TEST_OPTIONS,
    ScriptedHandler,
    executions,
    handlers_with,
    insert_bot,
    insert_task,
    running_worker,
    start_bot,
)
from tests.support.waiting import eventually
from workflows.models import SIGNAL_STOP


async def test_the_first_heartbeat_comes_one_period_after_the_start_and_a_stop_still_lands(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    task = await insert_task(pool, bot, "scripted", next_planned_run_at=now)
    handler = ScriptedHandler(script={task: ["sleep"]}, sleep_seconds=120)
    period = Watchdog(timedelta(seconds=TEST_OPTIONS.heartbeat_timeout_seconds)).period
    async with running_worker(env.client, pool, task_queue, handlers_with(handler)):
        handle = await start_bot(env.client, bot, task_queue)
        await asyncio.wait_for(handler.started.wait(), 30)

        handler_started = time.monotonic()

        async def beaten() -> bool:
            described = await handle.describe()
            return any(p.HasField("heartbeat_details") for p in described.raw_description.pending_activities)

        await eventually(beaten, interval=0.05)
        # Not at the start (an attempt used to beat at once, before its handler was called) but
        # one period in: less the moments between the attempt's start and its handler's.
        assert time.monotonic() - handler_started >= period / 2

        await handle.signal(SIGNAL_STOP)
        rows = await eventually(lambda: executions(pool, bot, task), lambda r: r[0]["status"] != "started")
        assert rows[0]["status"] == "cancelled"
