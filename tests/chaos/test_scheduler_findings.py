"""Regression tests for defects the chaos runs found in the scheduler."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import Client

from tests.chaos.conftest import Fakes
from tests.chaos.helpers import (
    WORKER_READY,
    add_task,
    service_env,
    start_scheduler,
    stop_and_heal,
    wait_for_log,
    worker_proc,
)
from tests.chaos.infra import RestartableTemporal, processes
from tests.conftest import TEST_TOKEN_KEY
from tests.support.factories import insert_bot

pytestmark = [pytest.mark.chaos, pytest.mark.system]


async def test_a_frequent_high_priority_task_does_not_starve_an_overdue_one(
    chaos_pool: asyncpg.Pool,
    chaos_database_url: str,
    chaos_temporal: RestartableTemporal,
    chaos_client: Client,
    chaos_queue: str,
    fakes: Fakes,
    tmp_path: Path,
) -> None:
    """Promise (issue 3: due tasks run in priority order, sub-minute schedules allowed): a task
    that is due runs even when a higher-priority task recurs every second, because the bot is idle
    most of each second. Seen with pull_mentions every second starving reply_to_mentions."""
    bot = f"starve-{chaos_queue[-6:]}"
    await insert_bot(chaos_pool, bot)
    await add_task(chaos_pool, bot, "noop", priority=10, interval_seconds=1)
    low = await add_task(chaos_pool, bot, "noop", priority=0, interval_seconds=60)
    env = service_env(fakes, chaos_database_url, chaos_temporal.address, chaos_queue, TEST_TOKEN_KEY)
    with processes() as procs:
        worker = worker_proc("worker", env, tmp_path)
        procs.append(worker)
        worker.start()
        await wait_for_log(worker, WORKER_READY)
        await start_scheduler(chaos_client, bot, chaos_queue)
        await asyncio.sleep(8)
        await stop_and_heal(chaos_client, [bot])
    ran = await chaos_pool.fetchval(
        "SELECT count(*) FROM bot_task_executions WHERE task_definition_id = $1 AND status = 'completed'", low
    )
    assert ran >= 1
