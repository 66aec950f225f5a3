"""A bot's status without asking the workflow: what Temporal publishes (search attributes, read by
DescribeWorkflowExecution) plus the task rows in PostgreSQL, or the live feed's fresh snapshot; and the
one owner of the desired state (the workflow's running flag, mirrored into `bots.scheduler_enabled`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
from pydantic import BaseModel, Field
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
)
from temporalio.service import RPCError

from workflows.models import (
    SchedulerStatus,
    TaskState,
    TaskStatus,
)
from xbot.bot_control.commands import (
    MAX_REASON,
    UNREACHABLE_AFTER,
    Stored,
    WorkerUnavailable,
    describe,
    is_running,
    query_status,
    update_with_start,
)
from xbot.storage import task_definitions as definitions_table
from xbot.storage.bots import set_scheduler_enabled, set_schedulers_enabled
from xbot.storage.logs import write_log

log = logging.getLogger(__name__)

# Bounded: a slow worker must not hold up a status answer that stands without it.
PLANNED_TIMES_QUERY_TIMEOUT = timedelta(seconds=2)


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
    schedulerReachable: bool = Field(
        default=True,
        description="False: the workflow has work no worker picked up; the answer is what is stored",
    )
    message: str | None = None


class BotNotFound(Exception):
    """The bot has no row."""


_IN_PROGRESS: dict[str, TaskState] = {
    "started": "running",
    "waiting_lock": "waiting_lock",
    "retrying": "retrying",
}


def _stored_task(row: asyncpg.Record, now: datetime, running: bool) -> TaskStatus:
    state: TaskState
    reason: str | None = None
    last = row["last_status"]
    if running and last in _IN_PROGRESS:
        state = _IN_PROGRESS[last]
        reason = row["last_error"] if last == "retrying" else None
    elif row["is_paused"]:
        state = "paused"
    elif row["next_planned_run_at"] is not None and row["next_planned_run_at"] <= now:
        state = "due"
    else:
        state = "scheduled"
        reason = None
    if state in ("due", "paused") and last == "failed":
        reason = row["last_error"]
    return TaskStatus(
        id=row["id"],
        taskType=row["task_type"],
        priority=row["priority"],
        nextDueAt=row["next_planned_run_at"],
        lastSuccessAt=row["last_successful_run_at"],
        consecutiveFailures=row["consecutive_failures"],
        state=state,
        stateReason=reason[:MAX_REASON] if reason else None,
    )


async def _stored_tasks(pool: asyncpg.Pool, bot_id: str) -> tuple[bool, list[asyncpg.Record]]:
    rows = await definitions_table.active_tasks_with_last_run(pool, bot_id)
    if not rows:
        raise BotNotFound(bot_id)
    return bool(rows[0]["scheduler_enabled"]), [row for row in rows if row["id"] is not None]


def should_run(stored: Stored, enabled: bool) -> bool:
    """The desired state: the workflow's own last word when it published one, else the column."""
    return stored.running if stored.running is not None else enabled


async def _with_planned_times(client: Client, bot_id: str, tasks: list[TaskStatus]) -> list[TaskStatus]:
    """A task that has not run yet has no planned time stored (its first run writes it); the
    workflow knows it: one `status` query, only then. Without an answer the rows stand as they are."""
    try:
        live = await query_status(client, bot_id, timeout=PLANNED_TIMES_QUERY_TIMEOUT)
    except (WorkerUnavailable, RPCError) as error:
        log.debug("status of %s: no planned times from the workflow: %s", bot_id, error)
        return tasks
    if live is None:
        return tasks
    due = {task.id: task.nextDueAt for task in live.tasks}
    return [
        task if task.nextDueAt is not None else task.model_copy(update={"nextDueAt": due.get(task.id)})
        for task in tasks
    ]


# The live feed's latest `status` poll of the bot, when it has one young enough to trust.
Snapshot = Callable[[str], SchedulerStatus | None]


async def status(
    client: Client,
    pool: asyncpg.Pool,
    bot_id: str,
    task_queue: str,
    snapshot: Snapshot | None = None,
) -> StatusResult:
    stored, (enabled, rows) = await asyncio.gather(describe(client, bot_id), _stored_tasks(pool, bot_id))
    wanted = should_run(stored, enabled)
    healed = False
    message: str | None = None
    if wanted and stored.execution != WorkflowExecutionStatus.RUNNING:
        if rows:
            log.warning(
                "bot %s should be running but its workflow is %s: restarting it", bot_id, stored.execution
            )
            await update_with_start(client, bot_id, task_queue)
            stored = await describe(client, bot_id)
            stored.running = True  # the update answered once running: the attribute may lag a task
            healed = True
            message = "Scheduler was enabled but its workflow was not running: restarted"
            await write_log(pool, bot_id, "warn", message)
            _, rows = await _stored_tasks(pool, bot_id)
        else:
            wanted = False
            message = "Scheduler was enabled but has no tasks to schedule: disabled"
    if wanted != enabled:
        # The workflow was started or stopped some other way (CLI signal, Web UI): mirror it.
        await set_scheduler_enabled(pool, bot_id, wanted)
    running = is_running(stored)
    reachable = stored.stuck_for is None or stored.stuck_for < UNREACHABLE_AFTER
    if not reachable and message is None:
        seconds = stored.stuck_for.total_seconds() if stored.stuck_for else 0.0
        message = f"Scheduler unreachable: no worker has picked up its work for {seconds:.0f} s; showing what is stored"
    live = snapshot(bot_id) if snapshot is not None and reachable else None
    # A poll older than a start or stop that the attribute already shows is not used.
    if live is not None and stored.execution is not None and live.isRunning == running:
        return StatusResult(
            botId=bot_id,
            isRunning=live.isRunning,
            nextAlarmTime=live.nextAlarmTime,
            runningTasks=live.runningTasks,
            tasks=live.tasks,
            lastEventSeq=live.lastEventSeq,
            workflowStatus=stored.execution.name,
            schedulerEnabled=wanted,
            healed=healed,
            message=message,
        )
    now = datetime.now(UTC)
    tasks = [_stored_task(row, now, running) for row in rows]
    if running and reachable and any(task.nextDueAt is None for task in tasks):
        tasks = await _with_planned_times(client, bot_id, tasks)
    return StatusResult(
        botId=bot_id,
        isRunning=running,
        nextAlarmTime=stored.next_due_at if running else None,
        runningTasks=sorted(task.id for task in tasks if task.state in ("running", "waiting_lock")),
        tasks=tasks,
        workflowStatus=stored.execution.name if stored.execution is not None else None,
        schedulerEnabled=wanted,
        healed=healed,
        schedulerReachable=reachable,
        message=message,
    )


async def mirror_enabled(pool: asyncpg.Pool, wanted: dict[str, bool]) -> None:
    """Set `bots.scheduler_enabled` to what the workflows say, in one statement."""
    await set_schedulers_enabled(pool, wanted)
