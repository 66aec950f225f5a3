"""The BotScheduler's bookkeeping, kept apart from the Temporal calls in `bot_scheduler.py`.

Deterministic: every time and random number comes in as an argument (`workflow.now()`,
`workflow.random()`). It owns the plan and the per-task runtime state and decides what starts;
`SchedulerView` (its base) renders status and events; the workflow owns timers, activities
and signals.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from workflows.legacy_v1 import policy
from workflows.legacy_v1.models import (
    BotPlan,
    RunTrigger,
    SchedulerCarry,
    SettleResult,
    TaskFailure,
    TaskPlan,
    TaskProgress,
    TaskRunRequest,
    TaskRunResult,
    TaskRuntime,
)
from workflows.legacy_v1.policy import Candidate, DependencyVerdict, DependencyView
from workflows.legacy_v1.scheduler_view import MAX_ERROR_TEXT, SchedulerView

# A postponement never ends sooner than this, so a clock a little behind cannot spin the loop.
MIN_POSTPONEMENT = timedelta(seconds=1)


@dataclass(frozen=True)
class Start:
    task: TaskPlan
    trigger: RunTrigger


@dataclass(frozen=True)
class Skip:
    task: TaskPlan
    reason: str
    consumes: bool


@dataclass
class DispatchPlan:
    starts: list[Start] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)


class SchedulerState(SchedulerView):
    """The scheduler's state and every change to it."""

    # ------------------------------------------------------------------------------ the plan

    def pending_ids(self) -> frozenset[int]:
        """Definitions that run_task / pause_task named before they were loaded."""
        return frozenset(self.pending_run_requests) | frozenset(self.pending_pauses)

    def merge_plan(
        self, plan: BotPlan, now: datetime, rng: random.Random, asked_before: frozenset[int] = frozenset()
    ) -> list[int]:
        """Adopt freshly loaded definitions; return the ids no longer active.

        `asked_before` are the pending ids from before this load started: one still unknown now
        does not exist. Ids asked for during the load wait for the next one.
        """
        before = {task.id: task for task in (self.plan.tasks if self.plan else [])}
        self.plan = plan
        for task in plan.tasks:
            rt = self.tasks.get(task.id)
            old = before.get(task.id)
            if rt is None:
                nominal = policy.initial_due(task, now, plan.lead_seconds)
                self.tasks[task.id] = TaskRuntime(
                    id=task.id,
                    nominal_due_at=nominal,
                    fire_at=policy.jittered(nominal, task.jitter_seconds, self._unit(task, rng)),
                    paused=task.is_paused,
                    consecutive_failures=task.consecutive_failures,
                    last_success_at=task.last_successful_run_at,
                )
                continue
            if old is not None and _schedule_key(old) != _schedule_key(task):
                self._set_nominal(rt, task, policy.initial_due(task, now, plan.lead_seconds), rng)
            if old is not None and old.is_paused != task.is_paused:
                rt.paused = task.is_paused  # changed in the database since we last looked
            rt.consecutive_failures = task.consecutive_failures
        removed = [task_id for task_id in self.tasks if task_id not in {t.id for t in plan.tasks}]
        for task_id in removed:
            self.forget(task_id)
        waiting: list[int] = []
        for task_id in self.pending_run_requests:
            if task_id in self.tasks:
                self.tasks[task_id].requested_at = now
            elif task_id in asked_before:
                self.emit_log(now, "warn", f"run_task: no active task definition {task_id} for this bot")
            else:
                waiting.append(task_id)
        self.pending_run_requests = waiting
        for task_id, paused in list(self.pending_pauses.items()):
            if task_id in self.tasks:
                self.tasks[task_id].paused = paused
            if task_id in self.tasks or task_id in asked_before:
                del self.pending_pauses[task_id]
        if plan.healed_executions:
            self.emit_log(
                now, "warn", f"closed {plan.healed_executions} execution(s) left 'started' by a lost worker"
            )
        return removed

    def forget(self, task_id: int) -> None:
        self.tasks.pop(task_id, None)
        self.reasons.pop(task_id, None)
        if self.plan is not None:
            self.plan.tasks = [task for task in self.plan.tasks if task.id != task_id]

    def _unit(self, task: TaskPlan, rng: random.Random) -> float:
        return rng.random() if task.jitter_seconds > 0 else 0.0

    def _set_nominal(self, rt: TaskRuntime, task: TaskPlan, nominal: datetime, rng: random.Random) -> None:
        if nominal != rt.nominal_due_at:
            rt.nominal_due_at = nominal
            rt.fire_at = policy.jittered(nominal, task.jitter_seconds, self._unit(task, rng))

    # ------------------------------------------------------------------------------ dispatch

    def plan_dispatch(self, now: datetime, horizon: datetime, busy: Mapping[int, str]) -> DispatchPlan:
        """Which tasks start now (in order) and which are skipped, given the running ones."""
        self.reasons = {}
        views = {task.id: self._view(task, horizon, busy) for task in self.definitions()}
        # (task id, reference due time, priority, trigger); dependencies inherit the dependent's.
        work: list[tuple[int, datetime, int, RunTrigger]] = []
        for task in self.definitions():
            rt = self.tasks[task.id]
            if task.id in busy or not self.waits_for_time(rt):
                continue
            instant = self.due_instant(rt)
            if instant > horizon:
                continue
            trigger: RunTrigger = "schedule" if self.effective_fire(rt) <= horizon else "run_task"
            work.append((task.id, instant, task.priority, trigger))
        ready: dict[int, tuple[int, RunTrigger, datetime]] = {}
        plan = DispatchPlan()
        done: set[int] = set()
        while work:
            task_id, reference, priority, trigger = work.pop(0)
            if task_id in ready:  # already startable; a dependent may raise its priority
                old_priority, old_trigger, instant = ready[task_id]
                ready[task_id] = (max(old_priority, priority), old_trigger, instant)
                continue
            if task_id in done:
                continue
            done.add(task_id)
            task = self.task(task_id)
            decision = policy.resolve_dependencies(task.dependencies, views, reference)
            if decision.verdict is DependencyVerdict.READY:
                ready[task_id] = (priority, trigger, self.due_instant(self.tasks[task_id]))
            elif decision.verdict is DependencyVerdict.SKIP:
                plan.skips.append(Skip(task, decision.reason or "dependency failed", trigger == "schedule"))
            else:
                self.reasons[task_id] = decision.reason or "waiting for dependencies"
                for dep_id in decision.run_first:
                    if dep_id not in busy:
                        work.append(
                            (dep_id, reference, max(priority, self.task(dep_id).priority), "dependency")
                        )
        order = policy.dispatch_order(
            (Candidate(task_id, priority, instant) for task_id, (priority, _, instant) in ready.items()), now
        )
        plan.starts = [Start(self.task(c.task_id), ready[c.task_id][1]) for c in order]
        return plan

    def _view(self, task: TaskPlan, horizon: datetime, busy: Mapping[int, str]) -> DependencyView:
        rt = self.tasks[task.id]
        postponed = rt.not_before is not None and rt.not_before > horizon
        return DependencyView(
            task_id=task.id,
            label=task.label,
            schedule=policy.schedule_of(task),
            last_success_at=rt.last_success_at,
            last_failure_at=rt.last_failure_at,
            last_error=rt.last_error,
            busy=task.id in busy or postponed,
            paused=rt.paused,
        )

    # ---------------------------------------------------------------------------- outcomes

    def on_completed(
        self, task_id: int, request: TaskRunRequest, result: TaskRunResult, now: datetime, rng: random.Random
    ) -> None:
        rt = self.tasks.get(task_id)
        if rt is not None:
            rt.last_success_at = result.last_success_at or now
            rt.consecutive_failures = 0
            rt.last_error = None
            rt.not_before = None
            rt.not_before_reason = None
            self._set_nominal(rt, self.task(task_id), request.next_planned_run_at, rng)
        self.emit_entity(now, "task_execution", "completed", result.execution_id, task_id)

    def on_postponed(
        self, task_id: int, request: TaskRunRequest, result: TaskRunResult, now: datetime
    ) -> None:
        rt = self.tasks.get(task_id)
        if rt is not None:
            until = result.postponed_until or now
            rt.not_before = max(until, now + MIN_POSTPONEMENT)
            rt.not_before_reason = result.reason
            if request.trigger == "run_task":
                rt.requested_at = request.dispatched_at
        self.emit_entity(
            now, "task_execution", "postponed", result.execution_id, task_id, reason=result.reason
        )

    def on_failed(
        self, task_id: int, request: TaskRunRequest, failure: TaskFailure, now: datetime, rng: random.Random
    ) -> None:
        rt = self.tasks.get(task_id)
        if rt is not None:
            rt.consecutive_failures = failure.consecutive_failures or rt.consecutive_failures + 1
            rt.last_failure_at = now
            rt.last_error = failure.error[:MAX_ERROR_TEXT]
            self._set_nominal(rt, self.task(task_id), request.next_planned_run_at, rng)
        self.emit_entity(now, "task_execution", "failed", failure.execution_id, task_id, reason=failure.error)
        if failure.deactivated:
            self._deactivated(task_id, failure.consecutive_failures, failure.log_id, now)

    def on_settled(self, task_id: int, result: SettleResult, now: datetime) -> None:
        rt = self.tasks.get(task_id)
        if rt is not None:
            rt.consecutive_failures = result.consecutive_failures
        if result.deactivated:
            self._deactivated(task_id, result.consecutive_failures, result.log_id, now)

    def on_cancelled(self, task_id: int, now: datetime) -> None:
        self.emit_entity(now, "task_execution", "cancelled", None, task_id)

    def on_retrying(self, progress: TaskProgress, now: datetime) -> None:
        rt = self.tasks.get(progress.task_id)
        if rt is not None and progress.error:
            rt.last_error = progress.error[:MAX_ERROR_TEXT]
        self.emit_entity(now, "task_execution", "retrying", None, progress.task_id, attempt=progress.attempt)

    def on_skipped(self, skip: Skip, now: datetime, rng: random.Random) -> datetime:
        """Mark a skipped run (it counts as a failure for its dependents); return the next plan."""
        rt = self.tasks[skip.task.id]
        rt.last_failure_at = now
        rt.last_error = f"skipped: {skip.reason}"[:MAX_ERROR_TEXT]
        rt.requested_at = None
        if skip.consumes:
            schedule = policy.schedule_of(skip.task)
            nominal = policy.advance(schedule, rt.nominal_due_at, max(now, rt.fire_at))
            self._set_nominal(rt, skip.task, nominal, rng)
        return rt.nominal_due_at

    def _deactivated(self, task_id: int, failures: int, log_id: int | None, now: datetime) -> None:
        label = self.task(task_id).label if task_id in self.tasks else f"#{task_id}"
        self.forget(task_id)
        self.emit_entity(now, "task_definition", "deactivated", task_id, task_id)
        content = f"task {label} deactivated after {failures} consecutive failures"
        self.emit_log(now, "warn", content, log_id)

    # ------------------------------------------------------------------------------ control

    def start(self, now: datetime) -> bool:
        if self.running:
            return False
        self.running = True
        self.reload_requested = True  # definitions may have changed while stopped
        return True

    def stop(self, now: datetime) -> bool:
        if not self.running:
            return False
        self.running = False
        for rt in self.tasks.values():
            rt.requested_at = None
        return True

    def request_run(self, task_id: int, now: datetime) -> None:
        if not self.running:
            self.emit_log(now, "info", f"run_task {task_id} ignored: the scheduler is stopped")
        elif task_id in self.tasks:
            self.tasks[task_id].requested_at = now
        else:
            self.pending_run_requests.append(task_id)
            self.reload_requested = True

    def set_paused(self, task_id: int, paused: bool, now: datetime) -> None:
        rt = self.tasks.get(task_id)
        if rt is not None:
            rt.paused = paused
        else:
            self.pending_pauses[task_id] = paused
        self.emit_entity(now, "task_definition", "paused" if paused else "resumed", task_id, task_id)

    def carry(self) -> SchedulerCarry:
        return SchedulerCarry(
            running=self.running,
            plan=self.plan,
            tasks=list(self.tasks.values()),
            events=list(self.events),
            last_event_seq=self.last_event_seq,
            reload_requested=self.reload_requested,
            pending_run_requests=list(self.pending_run_requests),
            pending_pauses=dict(self.pending_pauses),
            search_attributes=self.search_attributes,
            generation=self.generation + 1,
        )


def _schedule_key(task: TaskPlan) -> tuple[int | None, str | None]:
    return (task.interval_seconds, task.cron_expression)
