"""Starting, stopping, querying and signalling a bot's BotScheduler workflow, with the seed's semantics.

`bots.scheduler_enabled` records what the operator asked for; start and stop keep it in sync, and
`status` heals a bot that should run but whose workflow is gone (the seed's self-healing).
Signals are asynchronous, so start and stop wait (bounded) until the `status` query reflects them:
a status read right after start or stop then agrees with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from pydantic import BaseModel, Field
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.service import RPCError, RPCStatusCode

from workflows.models import (
    QUERY_STATUS,
    SIGNAL_PAUSE_TASK,
    SIGNAL_RELOAD_TASKS,
    SIGNAL_RESUME_TASK,
    SIGNAL_RUN_TASK,
    SIGNAL_START,
    SIGNAL_STOP,
    WORKFLOW_NAME,
    SchedulerInput,
    SchedulerStatus,
    TaskIdArg,
    TaskStatus,
)
from xbot.bots import set_scheduler_enabled
from xbot.repositories.logs import write_log
from xbot.task_definitions import count_schedulable

log = logging.getLogger(__name__)

QUERY_TIMEOUT = timedelta(seconds=5)
REFLECT_TIMEOUT_SECONDS = 5.0
STOP_DRAIN_TIMEOUT_SECONDS = 15.0


class SchedulerConflict(Exception):
    """The request contradicts the scheduler's state (already running, not running)."""


class WorkerUnavailable(Exception):
    """The workflow exists but no worker answered its `status` query in time."""


class StartResult(BaseModel):
    message: str
    isRunning: bool


class StopResult(BaseModel):
    message: str


class StatusResult(BaseModel):
    botId: str
    isRunning: bool
    nextAlarmTime: datetime | None
    runningTasks: list[int] = Field(default_factory=list)
    tasks: list[TaskStatus] = Field(default_factory=list)
    lastEventSeq: int = 0
    workflowStatus: str | None = Field(description="Temporal execution status; null when never started")
    schedulerEnabled: bool
    healed: bool = Field(default=False, description="The workflow should have run but did not: restarted")
    message: str | None = None


def _handle(client: Client, bot_id: str) -> WorkflowHandle[Any, Any]:
    return client.get_workflow_handle(bot_id)


async def workflow_status(client: Client, bot_id: str) -> WorkflowExecutionStatus | None:
    """The latest run's execution status, or None when the bot's workflow never started."""
    try:
        description = await _handle(client, bot_id).describe(rpc_timeout=QUERY_TIMEOUT)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return description.status


async def query_status(
    client: Client, bot_id: str, timeout: timedelta = QUERY_TIMEOUT
) -> SchedulerStatus | None:
    """The workflow's `status` query; None when the bot's workflow never started."""
    try:
        result: SchedulerStatus = await _handle(client, bot_id).query(
            QUERY_STATUS, result_type=SchedulerStatus, rpc_timeout=timeout
        )
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None
        if error.status == RPCStatusCode.DEADLINE_EXCEEDED:
            raise WorkerUnavailable(f"no worker answered the status query of {bot_id}") from None
        raise
    except WorkflowQueryFailedError as error:
        raise WorkerUnavailable(f"the status query of {bot_id} failed: {error}") from None
    return result


async def _is_running(client: Client, bot_id: str) -> tuple[bool, SchedulerStatus | None]:
    if await workflow_status(client, bot_id) != WorkflowExecutionStatus.RUNNING:
        return False, None
    status = await query_status(client, bot_id)
    return bool(status and status.isRunning), status


async def _wait_until(
    client: Client, bot_id: str, predicate: Callable[[SchedulerStatus], bool], timeout: float
) -> SchedulerStatus | None:
    deadline = asyncio.get_running_loop().time() + timeout
    status: SchedulerStatus | None = None
    while True:
        try:
            status = await query_status(client, bot_id)
        except (RPCError, WorkerUnavailable, WorkflowQueryRejectedError) as error:
            log.debug("status query while waiting failed: %s", error)
        if (status is not None and predicate(status)) or asyncio.get_running_loop().time() >= deadline:
            return status
        await asyncio.sleep(0.05)


def _started(status: SchedulerStatus) -> bool:
    # Running, and the task definitions loaded (the workflow loads them right after `start`).
    return status.isRunning and bool(status.tasks)


async def _signal_with_start(client: Client, bot_id: str, task_queue: str) -> None:
    await client.start_workflow(
        WORKFLOW_NAME,
        SchedulerInput(bot_id=bot_id),
        id=bot_id,
        task_queue=task_queue,
        start_signal=SIGNAL_START,
    )


async def start(client: Client, pool: asyncpg.Pool, bot_id: str, task_queue: str) -> StartResult:
    running, _ = await _is_running(client, bot_id)
    if running:
        await set_scheduler_enabled(pool, bot_id, True)
        raise SchedulerConflict("Scheduler is already running")
    if await count_schedulable(pool, bot_id) == 0:
        return StartResult(message="No tasks to schedule", isRunning=False)
    await _signal_with_start(client, bot_id, task_queue)
    await set_scheduler_enabled(pool, bot_id, True)
    await write_log(pool, bot_id, "info", "Scheduler started")
    await _wait_until(client, bot_id, _started, REFLECT_TIMEOUT_SECONDS)
    return StartResult(message="Scheduler started", isRunning=True)


async def stop(client: Client, pool: asyncpg.Pool, bot_id: str) -> StopResult:
    running, _ = await _is_running(client, bot_id)
    # Whatever the workflow says, the operator no longer wants it running: status must not heal it.
    await set_scheduler_enabled(pool, bot_id, False)
    if not running:
        raise SchedulerConflict("Scheduler is not running")
    await _handle(client, bot_id).signal(SIGNAL_STOP)
    await write_log(pool, bot_id, "info", "Scheduler stopped")
    await _wait_until(client, bot_id, lambda status: not status.isRunning, REFLECT_TIMEOUT_SECONDS)
    return StopResult(message="Scheduler stopped")


async def status(client: Client, pool: asyncpg.Pool, bot_id: str, task_queue: str) -> StatusResult:
    enabled = bool(await pool.fetchval("SELECT scheduler_enabled FROM bots WHERE id = $1", bot_id))
    execution = await workflow_status(client, bot_id)
    healed = False
    message: str | None = None
    if enabled and execution != WorkflowExecutionStatus.RUNNING:
        if await count_schedulable(pool, bot_id) > 0:
            log.warning("bot %s should be running but its workflow is %s: restarting it", bot_id, execution)
            await _signal_with_start(client, bot_id, task_queue)
            await _wait_until(client, bot_id, _started, REFLECT_TIMEOUT_SECONDS)
            execution = WorkflowExecutionStatus.RUNNING
            healed = True
            message = "Scheduler was enabled but its workflow was not running: restarted"
            await write_log(pool, bot_id, "warn", message)
        else:
            await set_scheduler_enabled(pool, bot_id, False)
            enabled = False
            message = "Scheduler was enabled but has no tasks to schedule: disabled"
    current = await query_status(client, bot_id) if execution is not None else None
    return StatusResult(
        botId=bot_id,
        isRunning=bool(current and current.isRunning and execution == WorkflowExecutionStatus.RUNNING),
        nextAlarmTime=current.nextAlarmTime if current else None,
        runningTasks=current.runningTasks if current else [],
        tasks=current.tasks if current else [],
        lastEventSeq=current.lastEventSeq if current else 0,
        workflowStatus=execution.name if execution is not None else None,
        schedulerEnabled=enabled,
        healed=healed,
        message=message,
    )


async def _signal_if_running(client: Client, bot_id: str, signal: str, *args: Any) -> bool:
    """Signal the bot's workflow when it runs; False when there is none to signal."""
    try:
        await _handle(client, bot_id).signal(signal, *args)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:  # never started, or completed
            return False
        raise
    return True


async def reload_tasks(client: Client, bot_id: str) -> bool:
    return await _signal_if_running(client, bot_id, SIGNAL_RELOAD_TASKS)


async def pause_task(client: Client, bot_id: str, task_id: int) -> bool:
    return await _signal_if_running(client, bot_id, SIGNAL_PAUSE_TASK, TaskIdArg(task_id=task_id))


async def resume_task(client: Client, bot_id: str, task_id: int) -> bool:
    return await _signal_if_running(client, bot_id, SIGNAL_RESUME_TASK, TaskIdArg(task_id=task_id))


async def run_task(client: Client, bot_id: str, task_id: int) -> None:
    running, _ = await _is_running(client, bot_id)
    if not running:
        raise SchedulerConflict("Scheduler is not running")
    await _handle(client, bot_id).signal(SIGNAL_RUN_TASK, TaskIdArg(task_id=task_id))


async def shut_down_for_delete(client: Client, bot_id: str) -> None:
    """Before a bot is deleted: stop it (a running task is cancelled and recorded), then end the workflow."""
    if await workflow_status(client, bot_id) != WorkflowExecutionStatus.RUNNING:
        return
    handle = _handle(client, bot_id)
    await handle.signal(SIGNAL_STOP)
    await _wait_until(
        client,
        bot_id,
        lambda status: not status.isRunning and not status.runningTasks,
        STOP_DRAIN_TIMEOUT_SECONDS,
    )
    try:
        await handle.terminate(reason="bot deleted")
    except RPCError as error:
        if error.status != RPCStatusCode.NOT_FOUND:
            raise
