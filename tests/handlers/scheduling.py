"""Helpers for the handler tests that go through the real BotScheduler workflow."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from temporalio.client import Client, WorkflowHandle

from workflows.models import SIGNAL_START, WORKFLOW_NAME, SchedulerInput, SchedulerOptions

T = TypeVar("T")

# Quick detection of a dead worker (heartbeats), so a retry starts soon after a kill.
FAST_OPTIONS = SchedulerOptions(heartbeat_timeout_seconds=2.0)


def unique_bot_id() -> str:
    """Workflow id = bot id, and the dev server is shared by the whole session."""
    return f"bot-{uuid.uuid4().hex[:10]}"


async def add_task(pool: asyncpg.Pool, bot_id: str, task_type: str, **columns: Any) -> int:
    """A definition due now, hourly after that unless the columns say otherwise."""
    columns.setdefault("interval_minutes", 60)
    names = ", ".join(["bot_id", "task_type", *columns, "next_planned_run_at"])
    marks = ", ".join(f"${i}" for i in range(1, len(columns) + 3))
    task_id: int = await pool.fetchval(
        f"INSERT INTO bot_task_definitions ({names}) VALUES ({marks}, now()) RETURNING id",
        bot_id,
        task_type,
        *columns.values(),
    )
    return task_id


async def start_scheduler(client: Client, bot_id: str, task_queue: str) -> WorkflowHandle[Any, Any]:
    return await client.start_workflow(
        WORKFLOW_NAME,
        SchedulerInput(bot_id=bot_id, options=FAST_OPTIONS),
        id=bot_id,
        task_queue=task_queue,
        start_signal=SIGNAL_START,
    )


async def eventually(
    probe: Callable[[], Awaitable[T]], check: Callable[[T], bool], timeout: float = 60.0
) -> T:
    """Poll until `check` accepts the probed value; fail after `timeout` seconds of real time."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await probe()
        if check(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s; last value: {value!r}")
        await asyncio.sleep(0.1)


async def completed_results(pool: asyncpg.Pool, task_id: int) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT result_data FROM bot_task_executions WHERE task_definition_id = $1 AND status = 'completed'"
        " ORDER BY id",
        task_id,
    )
    return [row["result_data"] for row in rows]
