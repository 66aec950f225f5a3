"""Scheduler test helpers: bots and tasks for the time-skipping tests, scripted task handlers, starting bots."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
from temporalio.api.testservice.v1 import SleepRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.handlers.base import TaskContext, TaskHandler
from activities.handlers.noop import NoopHandler
from launch.worker import build_worker
from tests.support import factories
from tests.support.factories import new_bot_id
from tests.support.schedulers import query_status, start_scheduler
from workflows.models import SchedulerOptions, SchedulerStatus
from xbot.errors import NonRetryableTaskError, RateLimitedError, TaskError
from xbot.settings import load_settings

T = TypeVar("T")

HISTORIES = Path(__file__).parent / "histories"
SKIP_RPC_TIMEOUT = timedelta(minutes=3)

# Time-skipping runs: no early wake (the runner would wait in real time), prompt cancellation,
# no custom search attributes (the Java test server has none registered).
TEST_OPTIONS = SchedulerOptions(early_wake_ms=0, heartbeat_timeout_seconds=5.0, search_attributes=False)


async def insert_bot(pool: asyncpg.Pool, bot_id: str | None = None, plan_tier: str = "basic") -> str:
    """A bot whose operator asked its scheduler to run."""
    bot_id = bot_id or new_bot_id()
    return await factories.insert_bot(
        pool, bot_id, name=f"Test {bot_id}", plan_tier=plan_tier, scheduler_enabled=True
    )


async def insert_task(pool: asyncpg.Pool, bot_id: str, task_type: str = "noop", **columns: Any) -> int:
    """A task definition; every minute unless the columns say otherwise."""
    return await factories.insert_task(pool, bot_id, task_type, schedule={"interval_minutes": 1}, **columns)


async def executions(pool: asyncpg.Pool, bot_id: str, task_id: int | None = None) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            """
            SELECT * FROM bot_task_executions
            WHERE bot_id = $1 AND ($2::bigint IS NULL OR task_definition_id = $2)
            ORDER BY id
            """,
            bot_id,
            task_id,
        )
    )


async def definition(pool: asyncpg.Pool, task_id: int) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM bot_task_definitions WHERE id = $1", task_id)
    assert row is not None
    return row


@dataclass
class Call:
    task_id: int
    attempt: int
    due_at: Any
    execution_id: int


@dataclass
class ScriptedHandler:
    """Does what the script says for each call of a task: ok, fail, fatal, sleep, rate_limited.

    `script[task_id]` is consumed one action per call; when it runs out every call succeeds.
    `sleep` runs until cancelled (or `sleep_seconds` of real time).
    """

    script: dict[int, list[str]] = field(default_factory=dict)
    default: str = "ok"
    calls: list[Call] = field(default_factory=list)
    sleep_seconds: float = 60.0
    nap_seconds: float = 0.3
    started: asyncio.Event = field(default_factory=asyncio.Event)
    running: int = 0
    max_running: int = 0

    async def run(self, ctx: TaskContext) -> dict[str, Any]:
        self.calls.append(Call(ctx.task_id, ctx.attempt, ctx.due_at, ctx.execution_id))
        self.started.set()
        steps = self.script.get(ctx.task_id) or []
        action = steps.pop(0) if steps else self.default
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            return await self._act(action, ctx)
        finally:
            self.running -= 1

    async def _act(self, action: str, ctx: TaskContext) -> dict[str, Any]:
        if action == "fail":
            raise TaskError(f"scripted failure of task {ctx.task_id}")
        if action == "fatal":
            raise NonRetryableTaskError(f"scripted fatal failure of task {ctx.task_id}")
        if action == "rate_limited":
            raise RateLimitedError("mentions", ctx.due_at + timedelta(minutes=15))
        if action == "sleep":
            await asyncio.sleep(self.sleep_seconds)
        if action == "nap":
            await asyncio.sleep(self.nap_seconds)
        return {"ok": 1}

    def calls_of(self, task_id: int) -> list[Call]:
        return [call for call in self.calls if call.task_id == task_id]

    def order(self) -> list[int]:
        return [call.task_id for call in self.calls]


def handlers_with(handler: TaskHandler, *task_types: str) -> dict[str, TaskHandler]:
    handlers: dict[str, TaskHandler] = {"noop": NoopHandler()}
    for task_type in task_types or ("scripted",):
        handlers[task_type] = handler
    return handlers


# Workflows started per task queue, terminated when their test's worker stops: a leftover
# workflow whose activities nobody polls would stop the shared test server from skipping time.
_started: dict[str, list[WorkflowHandle[Any, Any]]] = {}


@asynccontextmanager
async def running_worker(
    client: Client,
    pool: asyncpg.Pool,
    task_queue: str,
    handlers: Mapping[str, TaskHandler],
    lock_pool: asyncpg.Pool | None = None,
) -> AsyncIterator[Worker]:
    async with httpx.AsyncClient() as http:
        worker = build_worker(
            client, pool, load_settings(), task_queue, http, handlers=handlers, lock_pool=lock_pool
        )
        try:
            async with worker:
                yield worker
        finally:
            await terminate_started(task_queue)


async def terminate_started(task_queue: str) -> None:
    for handle in _started.pop(task_queue, []):
        with contextlib.suppress(RPCError):  # already closed
            await handle.terminate("test finished")


async def start_bot(
    client: Client, bot_id: str, task_queue: str, options: SchedulerOptions = TEST_OPTIONS
) -> WorkflowHandle[Any, Any]:
    handle = await start_scheduler(client, bot_id, task_queue, options)
    _started.setdefault(task_queue, []).append(handle)
    return handle


async def status(handle: WorkflowHandle[Any, Any]) -> SchedulerStatus:
    return await query_status(handle)


def event_actions(current: SchedulerStatus, entity_type: str = "task_execution") -> list[tuple[int, str]]:
    """(taskId, action) of the entity_update events in the status buffer, oldest first."""
    return [
        (event.data["taskId"], event.data["action"])
        for event in current.recentEvents
        if event.type == "entity_update" and event.data.get("entityType") == entity_type
    ]


async def keep_history(handle: WorkflowHandle[Any, Any], name: str) -> None:
    """With XBOT_RECORD_HISTORIES=1, save this run's history for the replay test."""
    if not os.environ.get("XBOT_RECORD_HISTORIES"):
        return
    history = await handle.fetch_history()
    HISTORIES.mkdir(parents=True, exist_ok=True)
    record = {"workflow_id": history.workflow_id, "history": json.loads(history.to_json())}
    (HISTORIES / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


async def advance(
    env: WorkflowEnvironment, duration: timedelta, step: timedelta = timedelta(minutes=10)
) -> None:
    """Skip `duration` of workflow time in steps.

    Like `env.sleep`, with a longer RPC deadline than its 30 s default: on a busy machine the
    test server may need a while to play out the timers and activities of one step.
    """
    left = duration
    while left > timedelta(0):
        request = SleepRequest()
        request.duration.FromTimedelta(min(step, left))
        await env.client.test_service.unlock_time_skipping_with_sleep(request, timeout=SKIP_RPC_TIMEOUT)
        left -= step
