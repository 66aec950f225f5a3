"""Helpers for the handler tests that go through the real BotScheduler workflow."""

from __future__ import annotations

from typing import Any

import asyncpg
from temporalio.client import Client, WorkflowHandle

from tests.support import schedulers
from tests.support.factories import insert_task
from workflows.models import SchedulerOptions

# Quick detection of a dead worker (heartbeats), so a retry starts soon after a kill.
FAST_OPTIONS = SchedulerOptions(heartbeat_timeout_seconds=2.0)


async def add_task(pool: asyncpg.Pool, bot_id: str, task_type: str, **columns: Any) -> int:
    """A definition due now, hourly after that unless the columns say otherwise."""
    return await insert_task(pool, bot_id, task_type, due_now=True, **columns)


async def start_scheduler(client: Client, bot_id: str, task_queue: str) -> WorkflowHandle[Any, Any]:
    return await schedulers.start_scheduler(client, bot_id, task_queue, FAST_OPTIONS)


async def completed_results(pool: asyncpg.Pool, task_id: int) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT result_data FROM bot_task_executions WHERE task_definition_id = $1 AND status = 'completed'"
        " ORDER BY id",
        task_id,
    )
    return [row["result_data"] for row in rows]
