"""Typed payloads of the BotScheduler workflow: its input, signals and `status` query.

Shared with the API, which signals and queries the workflow. Status fields are camelCase because
they are the wire format the seed's clients (and the WebSocket feed) already speak.
No secrets and no tweet text ever travel in these models.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

SIGNAL_START = "start"
SIGNAL_STOP = "stop"
SIGNAL_RELOAD_TASKS = "reload_tasks"
SIGNAL_RUN_TASK = "run_task"
SIGNAL_PAUSE_TASK = "pause_task"
SIGNAL_RESUME_TASK = "resume_task"
QUERY_STATUS = "status"
WORKFLOW_NAME = "BotScheduler"

TaskState = Literal["scheduled", "due", "running", "retrying", "paused", "rate_limited", "waiting_lock"]
EventType = Literal["scheduler_status_update", "entity_update", "log"]


class TaskIdArg(BaseModel):
    """Argument of `run_task`, `pause_task` and `resume_task`."""

    task_id: int


class SchedulerEvent(BaseModel):
    """One entry of the bounded `recentEvents` buffer; `seq` grows by one per event, across runs."""

    seq: int
    type: EventType
    timestamp: datetime
    data: dict[str, Any] = Field(default_factory=dict)


class TaskStatus(BaseModel):
    id: int
    taskType: str
    priority: int
    nextDueAt: datetime | None
    lastSuccessAt: datetime | None
    consecutiveFailures: int
    state: TaskState
    stateReason: str | None = None


class SchedulerStatus(BaseModel):
    botId: str
    isRunning: bool
    nextAlarmTime: datetime | None
    runningTasks: list[int]
    tasks: list[TaskStatus]
    recentEvents: list[SchedulerEvent]
    lastEventSeq: int = 0


class SchedulerInput(BaseModel):
    """Start argument of BotScheduler. The scheduler may add fields with defaults (carried state)."""

    bot_id: str
