"""What the BotScheduler shows: its state, lookups, the recentEvents buffer, `status`, and the
Temporal Web UI (search attributes, current details).

`SchedulerPlan` (`scheduler_plan.py`) and `SchedulerState` (`scheduler_state.py`) add everything
that changes the state.
Deterministic: times come in as arguments.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from temporalio.common import SearchAttributeUpdate

from workflows.models import (
    BOT_ID,
    NEXT_DUE_AT,
    SCHEDULER_RUNNING,
    EventType,
    RunState,
    SchedulerCarry,
    SchedulerEvent,
    SchedulerOptions,
    SchedulerStatus,
    TaskPlan,
    TaskRuntime,
    TaskState,
    TaskStatus,
)

MAX_ERROR_TEXT = 300


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class SchedulerView:
    def __init__(self, bot_id: str, options: SchedulerOptions, carry: SchedulerCarry) -> None:
        self.bot_id = bot_id
        self.options = options
        self.early_wake = timedelta(milliseconds=options.early_wake_ms)
        self.running = carry.running
        self.plan = carry.plan
        self.tasks: dict[int, TaskRuntime] = {rt.id: rt for rt in carry.tasks}
        self.events = list(carry.events)
        self.last_event_seq = carry.last_event_seq
        self.reload_requested = carry.reload_requested or carry.plan is None
        self.pending_run_requests = list(carry.pending_run_requests)
        self.pending_pauses = dict(carry.pending_pauses)
        self.search_attributes = carry.search_attributes
        self.generation = carry.generation
        self.chain_id = carry.chain_id
        self.run_seq = carry.run_seq
        # The run of each task in progress (attempt in flight or waiting to retry).
        self.runs: dict[int, RunState] = {run.task.id: run for run in carry.runs}
        self.running_since = carry.running_since
        # Occurrences jumped over while the scheduler could not act (a dead worker, a busy run):
        # (task, due instants, reason) the workflow records as skipped rows.
        self.missed: list[tuple[TaskPlan, list[datetime], str]] = []
        self.reasons: dict[int, str] = {}
        self.announced: tuple[bool, datetime | None] | None = None

    # ------------------------------------------------------------------------------- lookups

    @property
    def plan_tier(self) -> str:
        return self.plan.plan_tier if self.plan else "basic"

    def definitions(self) -> list[TaskPlan]:
        return [task for task in (self.plan.tasks if self.plan else []) if task.id in self.tasks]

    def task(self, task_id: int) -> TaskPlan:
        """A loaded definition; callers ask only for ids in `self.tasks` (see `label`)."""
        for task in self.plan.tasks if self.plan else []:
            if task.id == task_id:
                return task
        raise KeyError(task_id)

    def label(self, task_id: int) -> str:
        """A definition's label, from the plan or from its run; never raises."""
        for task in self.plan.tasks if self.plan else []:
            if task.id == task_id:
                return task.label
        run = self.runs.get(task_id)
        return run.task.label if run is not None else f"#{task_id}"

    def runtime(self, task_id: int) -> TaskRuntime:
        return self.tasks[task_id]

    def due_instant(self, rt: TaskRuntime) -> datetime:
        """When the task should next start: its fire time, or now-ish when `run_task` asked."""
        instant = rt.fire_at if rt.requested_at is None else min(rt.fire_at, rt.requested_at)
        if rt.not_before is not None and rt.not_before > instant:
            return rt.not_before
        return instant

    def waits_for_time(self, rt: TaskRuntime) -> bool:
        return not rt.paused or rt.requested_at is not None

    def effective_fire(self, rt: TaskRuntime) -> datetime:
        return max(rt.fire_at, rt.not_before) if rt.not_before is not None else rt.fire_at

    def next_due(self, now: datetime) -> datetime | None:
        """The earliest future instant the scheduler must act at: a task's next occurrence (also of
        a task whose run is in progress: that occurrence is skipped with a row) or a run's retry."""
        instants = [self.due_instant(rt) for rt in self.tasks.values() if self.waits_for_time(rt)]
        instants += [run.retry_at for run in self.runs.values() if run.retry_at is not None]
        future = [instant for instant in instants if instant - self.early_wake > now]
        return min(future) if future else None

    def next_label(self, now: datetime) -> str:
        waiting = sorted(
            (self.due_instant(rt), self.label(rt.id)) for rt in self.tasks.values() if self.waits_for_time(rt)
        )
        return f"next: {waiting[0][1]}" if waiting else "idle"

    # ------------------------------------------------------------------------------- events

    def emit(self, now: datetime, kind: EventType, data: dict[str, Any]) -> None:
        self.last_event_seq += 1
        self.events.append(SchedulerEvent(seq=self.last_event_seq, type=kind, timestamp=now, data=data))
        overflow = len(self.events) - self.options.event_buffer_size
        if overflow > 0:
            del self.events[:overflow]

    def emit_entity(
        self, now: datetime, entity: str, action: str, entity_id: int | None, task_id: int, **extra: Any
    ) -> None:
        data: dict[str, Any] = {
            "entityType": entity,
            "action": action,
            "entityId": entity_id,
            "taskId": task_id,
        }
        data.update({key: value for key, value in extra.items() if value is not None})
        reason = data.get("reason")
        if isinstance(reason, str):
            data["reason"] = reason[:MAX_ERROR_TEXT]
        self.emit(now, "entity_update", data)

    def emit_log(self, now: datetime, level: str, content: str, log_id: int | None = None) -> None:
        self.emit(now, "log", {"id": log_id, "level": level, "content": content})

    def announce(self, now: datetime) -> None:
        """A scheduler_status_update whenever the running flag or the next alarm changes."""
        current = (self.running, self.next_due(now) if self.running else None)
        if current != self.announced:
            self.announced = current
            self.emit(
                now, "scheduler_status_update", {"isRunning": current[0], "nextAlarmTime": iso(current[1])}
            )

    # ------------------------------------------------------------------- status and web UI

    def search_attribute_updates(self) -> list[SearchAttributeUpdate[Any]]:
        """Changes to BotId / SchedulerRunning / NextDueAt since the last upsert."""
        state = self.search_attributes
        updates: list[SearchAttributeUpdate[Any]] = []
        if not state.bot_id_set:
            updates.append(BOT_ID.value_set(self.bot_id))
            state.bot_id_set = True
        if state.running != self.running:
            updates.append(SCHEDULER_RUNNING.value_set(self.running))
            state.running = self.running
        instants = [self.due_instant(rt) for rt in self.tasks.values() if self.waits_for_time(rt)]
        next_due = min(instants) if instants and self.running else None
        if next_due != state.next_due_at:
            updates.append(NEXT_DUE_AT.value_set(next_due) if next_due else NEXT_DUE_AT.value_unset())
            state.next_due_at = next_due
        return updates

    def describe(self, now: datetime, alarm_at: datetime | None, running: list[str]) -> str:
        if not self.running:
            head = "**stopped**"
        elif alarm_at is not None:
            head = f"sleeping until {alarm_at.isoformat()}; {self.next_label(now)}"
        else:
            head = "waiting for running tasks" if running else "idle: no task waits for a time"
        lines = [head, f"tasks: {len(self.tasks)}", f"running: {', '.join(running) or 'none'}"]
        lines += [f"{self.label(i)}: {reason}" for i, reason in sorted(self.reasons.items())]
        return "\n\n".join(lines)

    def status(self, now: datetime) -> SchedulerStatus:
        tasks = [self._task_status(task, now) for task in self.definitions()]
        tasks.sort(key=lambda t: (-t.priority, t.id))
        return SchedulerStatus(
            botId=self.bot_id,
            isRunning=self.running,
            nextAlarmTime=self.next_due(now) if self.running else None,
            runningTasks=sorted(task_id for task_id, run in self.runs.items() if run.in_flight),
            tasks=tasks,
            recentEvents=list(self.events),
            lastEventSeq=self.last_event_seq,
        )

    def _task_status(self, task: TaskPlan, now: datetime) -> TaskStatus:
        rt = self.tasks[task.id]
        state: TaskState
        reason: str | None = self.reasons.get(task.id)
        run = self.runs.get(task.id)
        if run is not None:
            state = "running" if run.phase == "starting" else run.phase
            reason = run.reason or reason
        elif rt.paused and rt.requested_at is None:
            state = "paused"
        elif rt.not_before is not None and rt.not_before > now:
            state, reason = "rate_limited", rt.not_before_reason
        elif self.due_instant(rt) <= now + self.early_wake:
            state = "due"
        else:
            state = "scheduled"
        return TaskStatus(
            id=task.id,
            taskType=task.task_type,
            priority=task.priority,
            nextDueAt=run.retry_at if run is not None and run.retry_at is not None else self.due_instant(rt),
            lastSuccessAt=rt.last_success_at,
            consecutiveFailures=rt.consecutive_failures,
            state=state,
            stateReason=reason or (rt.last_error if state != "scheduled" else None),
        )
