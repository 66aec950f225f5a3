"""Helpers for the handler tests that go through the real BotScheduler workflow."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
from temporalio.client import Client, WorkflowHandle

from launch.worker import build_worker
from tests.handlers.conftest import World
from tests.support import schedulers
from tests.support.factories import insert_task
from tests.support.waiting import eventually
from workflows.models import SchedulerOptions

# Quick detection of a dead worker (heartbeats), so a retry starts soon after a kill.
FAST_OPTIONS = SchedulerOptions(heartbeat_timeout_seconds=2.0)


async def add_task(pool: asyncpg.Pool, bot_id: str, task_type: str, **columns: Any) -> int:
    """A definition due now, hourly after that unless the columns say otherwise."""
    return await insert_task(pool, bot_id, task_type, due_now=True, **columns)


async def start_scheduler(client: Client, bot_id: str, task_queue: str) -> WorkflowHandle[Any, Any]:
    return await schedulers.start_scheduler(client, bot_id, task_queue, FAST_OPTIONS)


async def run_until_completed(
    world: World, client: Client, bot_id: str, task_queue: str, task_id: int
) -> WorkflowHandle[Any, Any]:
    """Run the bot's scheduler with a real in-process worker until the task has completed once;
    the scheduler is terminated after."""
    async with (
        httpx.AsyncClient() as http,
        build_worker(client, world.pool, world.settings, task_queue, http),
    ):
        handle = await start_scheduler(client, bot_id, task_queue)
        try:
            await eventually(lambda: completed_results(world.pool, task_id), bool)
        finally:
            await handle.terminate("test finished")
    return handle


async def completed_results(pool: asyncpg.Pool, task_id: int) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT result_data FROM bot_task_executions WHERE task_definition_id = $1 AND status = 'completed'"
        " ORDER BY id",
        task_id,
    )
    return [row["result_data"] for row in rows]
