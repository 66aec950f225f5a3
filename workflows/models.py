"""Typed payloads of the BotScheduler workflow: its input, signals and `status` query.

Shared with the API, which signals and queries the workflow. Status fields are camelCase because
they are the wire format the seed's clients (and the WebSocket feed) already speak.
No secrets and no tweet text ever travel in these models.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from temporalio.common import SearchAttributeKey

SIGNAL_START = "start"
SIGNAL_STOP = "stop"
SIGNAL_RELOAD_TASKS = "reload_tasks"
SIGNAL_RUN_TASK = "run_task"
SIGNAL_PAUSE_TASK = "pause_task"
SIGNAL_RESUME_TASK = "resume_task"
QUERY_STATUS = "status"
# `status` without the recentEvents buffer: the API's fallback when it needs the workflow's own word.
QUERY_STATUS_BRIEF = "status_brief"
# Workflow Updates: start and stop that answer with what the workflow did (the signals stay for CLI users).
UPDATE_START = "start_scheduler"
UPDATE_STOP = "stop_scheduler"
WORKFLOW_NAME = "BotScheduler"

# The custom search attributes the scheduler publishes (the API lists and describes by them).
BOT_ID = SearchAttributeKey.for_keyword("BotId")
SCHEDULER_RUNNING = SearchAttributeKey.for_bool("SchedulerRunning")
NEXT_DUE_AT = SearchAttributeKey.for_datetime("NextDueAt")
SEARCH_ATTRIBUTES = (BOT_ID, SCHEDULER_RUNNING, NEXT_DUE_AT)

TaskState = Literal["scheduled", "due", "running", "retrying", "paused", "rate_limited", "waiting_lock"]
# An execution row's status. `lost`: the attempt's worker died; `waiting_lock`: waiting for its lock.
ExecutionStatus = Literal[
    "started", "waiting_lock", "retrying", "completed", "failed", "cancelled", "skipped", "lost"
]
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


class ControlAnswer(BaseModel):
    """The workflow's answer to a start or stop update."""

    changed: bool = Field(description="False: it was already running (start) or already stopped (stop)")
    isRunning: bool
    tasks: int = 0


# ---------------------------------------------------------------------------------------------
# Scheduler internals: the plan, activity payloads and the state carried across continue-as-new.
# The API only needs the models above.
# ---------------------------------------------------------------------------------------------

ACTIVITY_LOAD_PLAN = "load_bot_plan"
ACTIVITY_SET_PAUSED = "set_task_paused"
# Core v2: one activity per attempt (never retried by Temporal) and idempotent bookkeeping.
ACTIVITY_RUN_ATTEMPT = "run_task_attempt"
ACTIVITY_SETTLE_ATTEMPT = "settle_task_attempt"
ACTIVITY_RECORD_SKIP = "record_skipped_occurrence"
# Sent by the task runner to its own workflow: waiting for a lock, or running again after it.
SIGNAL_TASK_PROGRESS = "task_progress"
# Marker of the core v2 code path (`workflow.patched`); runs without it replay on `legacy_v1`.
PATCH_CORE_V2 = "core-v2"
# Marker of the plan loaded by a local activity (inside the workflow task that needs it); runs
# without it replay with the `load_bot_plan` activity tasks they scheduled.
PATCH_LOCAL_PLAN_LOAD = "plan-load-local"

RunTrigger = Literal["schedule", "run_task", "dependency"]


class TaskSchedule(BaseModel):
    """The scheduling fields of a task definition, declared once: the workflow carries them in a
    `TaskPlan`, the API returns them in `xbot.task_definitions.TaskDefinition`. Never its `config`
    (it may hold secrets). The defaults let payloads recorded before a field existed still load."""

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


class TaskPlan(TaskSchedule):
    """One active definition as the workflow plans it (`interval_seconds` also stands for
    `interval_minutes`), with what the plan loader derives."""

    last_started_at: datetime | None = None
    # Grows on every operator edit of the schedule (interval, cron, jitter, next_planned_run_at).
    schedule_version: int = 0

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


class SetPausedInput(BaseModel):
    bot_id: str
    task_id: int
    paused: bool


class AttemptRequest(BaseModel):
    """One attempt of one run of a task: the activity input of `run_task_attempt`."""

    bot_id: str
    task_id: int
    task_type: str
    trigger: RunTrigger = "schedule"
    # The execution row's key: `{bot}/{chain}/{run}/{attempt}`; one row per key, written once.
    execution_key: str
    attempt: int = 1
    # When the run was due (the same for every attempt: handlers may use it as an idempotency
    # key), and when this attempt starts.
    due_at: datetime
    fire_at: datetime
    dispatched_at: datetime
    # A failure of this attempt ends the run (the retry budget is spent): count it.
    final: bool = False
    # Saved as next_planned_run_at on success or final failure, unless the operator edited the
    # schedule since (schedule_version moved on); None: leave it.
    next_planned_run_at: datetime | None = None
    schedule_version: int = 0
    plan_tier: str = "basic"
    lock_key: str | None = None
    rate_limit_endpoint: str | None = None
    min_rate_limit_remaining: int = 0
    timeout_seconds: int = 300


AttemptOutcome = Literal["completed", "postponed", "failed", "cancelled", "lost", "gone"]


class AttemptResult(BaseModel):
    """How an attempt ended, from the runner (or from the settle activity for a lost attempt)."""

    outcome: AttemptOutcome
    execution_id: int | None = None
    finished_at: datetime
    last_success_at: datetime | None = None
    postponed_until: datetime | None = None
    reason: str | None = None
    # For failures: the run is over (non-retryable error or the budget spent) and was counted.
    final: bool = False
    consecutive_failures: int = 0
    deactivated: bool = False
    log_id: int | None = None


class TaskProgress(BaseModel):
    """Signal `task_progress`. Also the pre-v2 runner's shape (activity_id, retrying, retry_at),
    which runs that began before core v2 still send."""

    task_id: int
    execution_key: str = ""
    activity_id: str = ""
    attempt: int = 1
    state: Literal["waiting_lock", "running", "retrying"]
    error: str | None = None
    retry_at: datetime | None = None


class SettleAttemptInput(BaseModel):
    """Close an attempt whose activity ended without the runner's account: lost or cancelled.

    Idempotent: the row is written only if it is missing or still open, and a failure is counted
    at most once per execution key. Answers with the row's final state, so an attempt that did
    finish (its worker died before reporting) is not run again.
    """

    bot_id: str
    task_id: int
    task_type: str
    execution_key: str
    attempt: int
    due_at: datetime
    # `failed` also counts the run's final failure (once per key); `retrying` records a failure
    # the run will retry.
    status: Literal["lost", "cancelled", "failed", "retrying"]
    reason: str
    next_planned_run_at: datetime | None = None
    schedule_version: int = 0


class SkipInput(BaseModel):
    """A due occurrence that does not run: one `skipped` row (keyed) with the reason."""

    bot_id: str
    task_id: int
    task_type: str
    execution_key: str
    due_at: datetime
    reason: str
    next_planned_run_at: datetime | None = None
    schedule_version: int = 0
    # More occurrences skipped for the same reason: one more row each (keys `{execution_key}/{i}`).
    more_due_at: list[datetime] = Field(default_factory=list)


class RunState(BaseModel):
    """One run of a task (an occurrence, a run_task request or a dependency), across its attempts.

    It carries the definition as it was when the run started, so the workflow never looks up a
    definition that may have gone; it is carried across continue-as-new while it waits to retry.
    """

    key: str
    task: TaskPlan
    trigger: RunTrigger
    fire_at: datetime
    dispatched_at: datetime
    next_planned_run_at: datetime | None = None
    attempt: int = 0
    failures: int = 0
    losses: int = 0
    phase: Literal["starting", "running", "waiting_lock", "retrying"] = "starting"
    retry_at: datetime | None = None
    reason: str | None = None
    cancel_reason: str | None = None
    # The attempt in flight (activity running), if any.
    in_flight: bool = False

    def execution_key(self, attempt: int | None = None) -> str:
        return f"{self.key}/{attempt if attempt is not None else self.attempt}"


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
    schedule_version: int = 0
    # First time it was ready but left waiting for another exclusive task (see policy ageing).
    passed_over_since: datetime | None = None


class SchedulerOptions(BaseModel):
    # Wake this much before a due time; the task runner waits for the exact instant.
    early_wake_ms: int = 1000
    # A stop reaches a running attempt on its next heartbeat; a dead worker's attempt is noticed
    # after this long and started again at once.
    heartbeat_timeout_seconds: float = 5.0
    # The Java time-skipping test server rejects undeclared custom search attributes.
    search_attributes: bool = True
    # Continue-as-new at the first moment past this history length with no attempt in flight...
    continue_after_events: int = 2000
    # ...and past this one start no new attempt until the running ones finish, then continue.
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
    # Core v2: names execution keys across the runs of one bot's chain of workflow runs.
    chain_id: str | None = None
    run_seq: int = 0
    # Runs waiting to retry (no attempt in flight) when the workflow continued as new.
    runs: list[RunState] = Field(default_factory=list)
    # Since when the bot has been running: occurrences due since then that never ran get a row.
    running_since: datetime | None = None


class SchedulerInput(BaseModel):
    """Start argument of BotScheduler. The scheduler may add fields with defaults (carried state)."""

    bot_id: str
    options: SchedulerOptions = Field(default_factory=SchedulerOptions)
    carry: SchedulerCarry | None = None
