"""Talking to a bot's BotScheduler workflow: start and stop (Workflow Updates), signals, the status
query, describe and list. Every call that reaches the workflow goes through here, with one error
policy: SchedulerConflict (the request contradicts its state), WorkerUnavailable (no worker answered in
time), None where there is no workflow; any other RPC error propagates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from pydantic import BaseModel
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import PendingWorkflowTaskState
from temporalio.api.workflowservice.v1 import ListWorkflowExecutionsRequest
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import QueryRejectCondition, WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from workflows.models import (
    QUERY_STATUS,
    SIGNAL_PAUSE_TASK,
    SIGNAL_RELOAD_TASKS,
    SIGNAL_RESUME_TASK,
    SIGNAL_RUN_TASK,
    SIGNAL_START,
    SIGNAL_STOP,
    UPDATE_START,
    UPDATE_STOP,
    WORKFLOW_NAME,
    ControlAnswer,
    SchedulerCarry,
    SchedulerInput,
    SchedulerOptions,
    SchedulerStatus,
    TaskIdArg,
)
from xbot.bots import BOT_ID_PATTERN
from xbot.storage import task_definitions as definitions_table
from xbot.storage.bots import set_scheduler_enabled
from xbot.storage.logs import write_log
from xbot.temporal import NEXT_DUE_AT, SCHEDULER_RUNNING

log = logging.getLogger(__name__)

QUERY_TIMEOUT = timedelta(seconds=5)
DESCRIBE_TIMEOUT = timedelta(seconds=5)
# An update waits for a worker; past this the API answers 503 rather than hang.
CONTROL_TIMEOUT_SECONDS = 10.0
STOP_DRAIN_TIMEOUT_SECONDS = 15.0
# A workflow task scheduled this long ago and not picked up: no worker is serving the bot.
UNREACHABLE_AFTER = timedelta(seconds=3)
MAX_REASON = 300


class SchedulerConflict(Exception):
    """The request contradicts the scheduler's state (already running, not running)."""


class WorkerUnavailable(Exception):
    """The workflow exists but no worker answered (a query or an update) in time."""


class StartResult(BaseModel):
    message: str
    isRunning: bool


class StopResult(BaseModel):
    message: str


@dataclass
class Stored:
    """What Temporal keeps about the bot's latest run, read without asking the workflow."""

    execution: WorkflowExecutionStatus | None
    running: bool | None  # the SchedulerRunning search attribute; None when never published
    next_due_at: datetime | None
    stuck_for: timedelta | None  # how long a workflow task has waited for a worker


def _handle(client: Client, bot_id: str) -> WorkflowHandle[Any, Any]:
    return client.get_workflow_handle(bot_id)


async def describe(client: Client, bot_id: str) -> Stored:
    """One DescribeWorkflowExecution: execution status, published flags, a workflow task waiting."""
    try:
        description = await _handle(client, bot_id).describe(rpc_timeout=DESCRIBE_TIMEOUT)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return Stored(None, None, None, None)
        raise
    attributes = description.typed_search_attributes
    stuck: timedelta | None = None
    pending = description.raw_description.pending_workflow_task
    if (
        description.raw_description.HasField("pending_workflow_task")
        and pending.state == PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_SCHEDULED
    ):
        scheduled = (
            pending.original_scheduled_time
            if pending.HasField("original_scheduled_time")
            else pending.scheduled_time
        )
        stuck = datetime.now(UTC) - scheduled.ToDatetime(tzinfo=UTC)
    return Stored(
        description.status,
        attributes.get(SCHEDULER_RUNNING),
        attributes.get(NEXT_DUE_AT),
        stuck,
    )


async def workflow_status(client: Client, bot_id: str) -> WorkflowExecutionStatus | None:
    """The latest run's execution status, or None when the bot's workflow never started."""
    return (await describe(client, bot_id)).execution


async def query_status(
    client: Client,
    bot_id: str,
    timeout: timedelta | None = QUERY_TIMEOUT,
    query: str = QUERY_STATUS,
    *,
    open_only: bool = False,
) -> SchedulerStatus | None:
    """The workflow's own `status` query: the live feed's poll, the CLI's view, a fallback.

    The one error policy for every caller: None when there is no workflow to answer (never started,
    or, with `open_only`, closed); WorkerUnavailable when it exists but no worker answered in time or
    the query failed; any other RPC error propagates. `timeout` None: wait as long as the server does.
    """
    try:
        result: SchedulerStatus = await _handle(client, bot_id).query(
            query,
            result_type=SchedulerStatus,
            reject_condition=QueryRejectCondition.NOT_OPEN if open_only else None,
            rpc_timeout=timeout,
        )
    except WorkflowQueryRejectedError:
        return None  # closed, and only an open workflow's answer was wanted
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None
        if error.status == RPCStatusCode.DEADLINE_EXCEEDED:
            raise WorkerUnavailable(f"no worker answered the status query of {bot_id}") from None
        raise
    except WorkflowQueryFailedError as error:
        raise WorkerUnavailable(f"the status query of {bot_id} failed: {error}") from None
    return result


async def signal_start(
    client: Client, bot_id: str, task_queue: str, options: SchedulerOptions | None = None
) -> WorkflowHandle[Any, Any]:
    """Signal-with-start `start`, as a CLI user or a script does it (the API uses the `start_scheduler`
    update instead): starts the workflow when there is none, and is idempotent otherwise."""
    scheduler_input = (
        SchedulerInput(bot_id=bot_id) if options is None else SchedulerInput(bot_id=bot_id, options=options)
    )
    return await client.start_workflow(
        WORKFLOW_NAME, scheduler_input, id=bot_id, task_queue=task_queue, start_signal=SIGNAL_START
    )


def is_running(stored: Stored) -> bool:
    return stored.execution == WorkflowExecutionStatus.RUNNING and bool(stored.running)


async def _control(call: Awaitable[ControlAnswer], bot_id: str) -> ControlAnswer:
    try:
        return await asyncio.wait_for(call, CONTROL_TIMEOUT_SECONDS)
    except TimeoutError:
        raise WorkerUnavailable(f"no worker answered the scheduler of {bot_id}") from None


async def update_with_start(client: Client, bot_id: str, task_queue: str) -> ControlAnswer:
    """The `start_scheduler` update, starting the workflow first when there is none."""
    operation: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
        WORKFLOW_NAME,
        # A new workflow starts stopped, so the update (not the start) is what turns it on.
        SchedulerInput(bot_id=bot_id, carry=SchedulerCarry(running=False)),
        id=bot_id,
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    answer: ControlAnswer = await _control(
        client.execute_update_with_start_workflow(
            UPDATE_START, start_workflow_operation=operation, result_type=ControlAnswer
        ),
        bot_id,
    )
    return answer


async def start(client: Client, pool: asyncpg.Pool, bot_id: str, task_queue: str) -> StartResult:
    if await definitions_table.count_active(pool, bot_id) == 0:
        if is_running(await describe(client, bot_id)):
            await set_scheduler_enabled(pool, bot_id, True)
            raise SchedulerConflict("Scheduler is already running")
        return StartResult(message="No tasks to schedule", isRunning=False)
    answer = await update_with_start(client, bot_id, task_queue)
    await set_scheduler_enabled(pool, bot_id, answer.isRunning)
    if not answer.changed:
        raise SchedulerConflict("Scheduler is already running")
    await write_log(pool, bot_id, "info", "Scheduler started")
    return StartResult(message="Scheduler started", isRunning=answer.isRunning)


async def stop(client: Client, pool: asyncpg.Pool, bot_id: str) -> StopResult:
    # Whatever the workflow says, the operator no longer wants it running: status must not heal it.
    await set_scheduler_enabled(pool, bot_id, False)
    try:
        answer: ControlAnswer = await _control(
            _handle(client, bot_id).execute_update(UPDATE_STOP, result_type=ControlAnswer), bot_id
        )
    except RPCError as error:
        # Never started, or its last run is closed: nothing runs.
        if error.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
            raise SchedulerConflict("Scheduler is not running") from None
        raise
    except WorkflowUpdateFailedError as error:
        raise WorkerUnavailable(f"the stop update of {bot_id} failed: {error}") from None
    if not answer.changed:
        raise SchedulerConflict("Scheduler is not running")
    await write_log(pool, bot_id, "info", "Scheduler stopped")
    return StopResult(message="Scheduler stopped")


LIST_TIMEOUT = timedelta(seconds=5)


@dataclass
class Listed:
    running: bool | None  # the SchedulerRunning attribute; None when not published
    next_due_at: datetime | None


async def list_running(client: Client, bot_ids: list[str]) -> dict[str, Listed]:
    """The running workflows among `bot_ids`, from one ListWorkflowExecutions call (visibility).

    A bot missing from the answer has no running workflow. Ids are matched as WorkflowId (always
    indexed, set before the workflow's first task) and only ids of the API's own pattern are sent.
    """
    safe = [bot_id for bot_id in bot_ids if re.fullmatch(BOT_ID_PATTERN, bot_id)]
    if not safe:
        return {}
    ids = ", ".join(f"'{bot_id}'" for bot_id in safe)
    query = f"WorkflowType = '{WORKFLOW_NAME}' AND ExecutionStatus = 'Running' AND WorkflowId IN ({ids})"
    found: dict[str, Listed] = {}
    # The raw call, decoding only the two published attributes: building the SDK's full execution
    # objects cost a third of the call for a page of 100.
    request = ListWorkflowExecutionsRequest(namespace=client.namespace, query=query, page_size=len(safe))
    while True:
        response = await client.workflow_service.list_workflow_executions(
            request, retry=True, timeout=LIST_TIMEOUT
        )
        for execution in response.executions:
            fields = execution.search_attributes.indexed_fields
            found[execution.execution.workflow_id] = Listed(
                _published_bool(fields.get(SCHEDULER_RUNNING.name)),
                _published_datetime(fields.get(NEXT_DUE_AT.name)),
            )
        if not response.next_page_token:
            return found
        request.next_page_token = response.next_page_token


# A page's rows are decoded here, two attributes each: the SDK's decoder converts every attribute of
# every row (about a quarter of the list call's time for a page of 100 running bots).
def _published_value(payload: Payload | None) -> Any:
    if payload is None or not payload.data:
        return None
    try:
        value = json.loads(payload.data)
    except ValueError:
        return None
    if isinstance(value, list):  # visibility may answer a one-element list
        return value[0] if len(value) == 1 else None
    return value


def _published_bool(payload: Payload | None) -> bool | None:
    value = _published_value(payload)
    return value if isinstance(value, bool) else None


def _published_datetime(payload: Payload | None) -> datetime | None:
    value = _published_value(payload)
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


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
    if not is_running(await describe(client, bot_id)):
        raise SchedulerConflict("Scheduler is not running")
    await _handle(client, bot_id).signal(SIGNAL_RUN_TASK, TaskIdArg(task_id=task_id))


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


async def shut_down_for_delete(client: Client, bot_id: str) -> None:
    """Before a bot is deleted: stop it (a running task is cancelled and recorded), then end the workflow."""
    if await workflow_status(client, bot_id) != WorkflowExecutionStatus.RUNNING:
        return
    handle = _handle(client, bot_id)
    await handle.signal(SIGNAL_STOP)
    # Waits for the cancelled task to be recorded, which no update answer covers.
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
