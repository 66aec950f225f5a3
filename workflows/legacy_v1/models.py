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


# ---------------------------------------------------------------------------------------------
# Scheduler internals: the plan, activity payloads and the state carried across continue-as-new.
# Added by the scheduler; the API only needs the models above.
# ---------------------------------------------------------------------------------------------

ACTIVITY_LOAD_PLAN = "load_bot_plan"
ACTIVITY_RUN_TASK = "run_bot_task"
ACTIVITY_RECORD_SKIPPED = "record_skipped_run"
ACTIVITY_SET_PAUSED = "set_task_paused"
ACTIVITY_SETTLE_LOST_RUN = "settle_lost_run"
# Sent by the task runner to its own workflow: lock contention and "attempt failed, backing off".
SIGNAL_TASK_PROGRESS = "task_progress"

RunTrigger = Literal["schedule", "run_task", "dependency"]


class TaskPlan(BaseModel):
    """The scheduling fields of one active definition. Never its `config` (it may hold secrets)."""

    id: int
    task_type: str
    name: str | None = None
    interval_seconds: int | None = None
    cron_expression: str | None = None
    jitter_seconds: int = 0
    priority: int = 0
    dependencies: list[int] = Field(default_factory=list)
    max_retries: int = 3
    retry_delay_minutes: float = 1.0
    retry_backoff_coefficient: float = 2.0
    max_retry_delay_minutes: float = 60.0
    timeout_seconds: int = 300
    error_threshold: int = 5
    consecutive_failures: int = 0
    rate_limit_endpoint: str | None = None
    min_rate_limit_remaining: int = 0
    lock_key: str | None = None
    allow_overlap: bool = False
    is_paused: bool = False
    next_planned_run_at: datetime | None = None
    last_successful_run_at: datetime | None = None
    last_started_at: datetime | None = None

    @property
    def label(self) -> str:
        return f"{self.name or self.task_type} #{self.id}"


class BotPlan(BaseModel):
    bot_id: str
    exists: bool = True
    plan_tier: str = "basic"
    lead_seconds: float = 60.0
    tasks: list[TaskPlan] = Field(default_factory=list)
    healed_executions: int = 0


class LoadPlanInput(BaseModel):
    bot_id: str
    # Executions whose key starts with one of these belong to attempts still running: not stale.
    keep_execution_prefixes: list[str] = Field(default_factory=list)


class TaskRunRequest(BaseModel):
    bot_id: str
    task_id: int
    task_type: str
    trigger: RunTrigger = "schedule"
    fire_at: datetime
    dispatched_at: datetime
    # What the runner saves as next_planned_run_at once this run settles (success or final failure).
    next_planned_run_at: datetime
    plan_tier: str = "basic"
    lock_key: str | None = None
    allow_overlap: bool = False
    # Also take the per-bot lock: another exclusive task of the bot is in a retry cycle.
    bot_lock: bool = False
    rate_limit_endpoint: str | None = None
    min_rate_limit_remaining: int = 0
    timeout_seconds: int = 300
    # The retry policy's maximum_attempts: the attempt that reaches it is final (0 = unlimited).
    max_attempts: int = 0


class TaskRunResult(BaseModel):
    outcome: Literal["completed", "postponed", "gone"]
    execution_id: int | None = None
    attempt: int = 1
    finished_at: datetime
    last_success_at: datetime | None = None
    postponed_until: datetime | None = None
    reason: str | None = None


class TaskFailure(BaseModel):
    """Details of the ApplicationError a task attempt ends with."""

    execution_id: int | None = None
    attempt: int = 1
    final: bool = False
    consecutive_failures: int = 0
    deactivated: bool = False
    log_id: int | None = None
    error: str = ""


class TaskProgress(BaseModel):
    task_id: int
    activity_id: str
    attempt: int
    state: Literal["waiting_lock", "running", "retrying"]
    error: str | None = None
    retry_at: datetime | None = None


class SkipRunInput(BaseModel):
    bot_id: str
    task_id: int
    task_type: str
    due_at: datetime
    reason: str
    next_planned_run_at: datetime


class SetPausedInput(BaseModel):
    bot_id: str
    task_id: int
    paused: bool


class LostRunInput(BaseModel):
    """An attempt whose worker vanished: close its rows and count the failure if it was final."""

    bot_id: str
    task_id: int
    keep_execution_prefixes: list[str] = Field(default_factory=list)
    reason: str
    count_failure: bool = True
    next_planned_run_at: datetime | None = None
    # The attempt's row when the runner recorded it as retrying but Temporal gave up after it.
    execution_id: int | None = None


class SettleResult(BaseModel):
    execution_id: int | None = None
    healed: int = 0
    consecutive_failures: int = 0
    deactivated: bool = False
    log_id: int | None = None


class TaskRuntime(BaseModel):
    """Per-definition scheduling state the workflow carries across continue-as-new."""

    id: int
    nominal_due_at: datetime
    fire_at: datetime
    not_before: datetime | None = None
    not_before_reason: str | None = None
    # Set by `run_task`: run once as soon as possible, whatever the schedule says.
    requested_at: datetime | None = None
    paused: bool = False
    consecutive_failures: int = 0
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
    last_error: str | None = None


class SchedulerOptions(BaseModel):
    # Wake this much before a due time; the task runner waits for the exact instant.
    early_wake_ms: int = 1000
    # A stop reaches a running attempt on its next heartbeat (at most 80 % of this); a dead worker's
    # attempt is timed out and retried after this long.
    heartbeat_timeout_seconds: float = 5.0
    # The Java time-skipping test server rejects undeclared custom search attributes.
    search_attributes: bool = True
    # Continue-as-new at the first idle moment past this history length...
    continue_after_events: int = 2000
    # ...and past this one stop starting tasks until the running ones finish, then continue.
    drain_after_events: int = 8000
    event_buffer_size: int = 200


class SearchAttributeState(BaseModel):
    running: bool | None = None
    next_due_at: datetime | None = None
    bot_id_set: bool = False


class SchedulerCarry(BaseModel):
    """Everything a continued run needs; None on a bot's first run."""

    running: bool = True
    plan: BotPlan | None = None
    tasks: list[TaskRuntime] = Field(default_factory=list)
    events: list[SchedulerEvent] = Field(default_factory=list)
    last_event_seq: int = 0
    reload_requested: bool = False
    pending_run_requests: list[int] = Field(default_factory=list)
    # pause_task / resume_task for definitions not loaded yet, applied when they are.
    pending_pauses: dict[int, bool] = Field(default_factory=dict)
    search_attributes: SearchAttributeState = Field(default_factory=SearchAttributeState)
    generation: int = 0


class SchedulerInput(BaseModel):
    """Start argument of BotScheduler. The scheduler may add fields with defaults (carried state)."""

    bot_id: str
    options: SchedulerOptions = Field(default_factory=SchedulerOptions)
    carry: SchedulerCarry | None = None
