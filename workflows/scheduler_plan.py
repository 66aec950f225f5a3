"""The BotScheduler's plan: the task definitions it adopted and which of them start now.

Deterministic: times and random numbers come in as arguments. `SchedulerPlan` merges freshly
loaded definitions into the per-task runtime state (an operator's edit applies at once) and plans
each dispatch (due tasks, dependencies, priority order, skips); `SchedulerState`
(`scheduler_state.py`) adds the runs that dispatch starts.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from workflows import policy
from workflows.models import BotPlan, RunTrigger, TaskPlan, TaskRuntime
from workflows.policy import Candidate, DependencyVerdict, DependencyView
from workflows.scheduler_view import SchedulerView


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


class SchedulerPlan(SchedulerView):
    """The adopted definitions and the dispatch decision."""

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
                    schedule_version=task.schedule_version,
                )
                continue
            if (
                _schedule_key(old or task) != _schedule_key(task)
                or rt.schedule_version != task.schedule_version
            ):
                # An operator edit: the new schedule applies at once, and the run in progress (if
                # any) must not restore the old one when it ends.
                rt.schedule_version = task.schedule_version
                self._set_nominal(rt, task, policy.initial_due(task, now, plan.lead_seconds), rng, force=True)
                run = self.runs.get(task.id)
                if run is not None:
                    run.next_planned_run_at = None
            elif old is not None and old.jitter_seconds != task.jitter_seconds:
                rt.fire_at = policy.jittered(rt.nominal_due_at, task.jitter_seconds, self._unit(task, rng))
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

    def _set_nominal(
        self, rt: TaskRuntime, task: TaskPlan, nominal: datetime, rng: random.Random, force: bool = False
    ) -> None:
        if force or nominal != rt.nominal_due_at:
            rt.nominal_due_at = nominal
            rt.fire_at = policy.jittered(nominal, task.jitter_seconds, self._unit(task, rng))

    # ------------------------------------------------------------------------------ dispatch

    def plan_dispatch(self, now: datetime, horizon: datetime, busy: Mapping[int, str]) -> DispatchPlan:
        """Which tasks start now (in order) and which are skipped, given the running ones."""
        self.reasons = {}
        views = {task.id: self._view(task, horizon, busy) for task in self.definitions()}
        # (task id, reference due time, priority, trigger); dependencies inherit the dependent's.
        work: list[tuple[int, datetime, int, RunTrigger]] = []
        plan = DispatchPlan()
        for task in self.definitions():
            rt = self.tasks[task.id]
            if not self.waits_for_time(rt):
                continue
            if task.id in busy:
                # One run of a task at a time: an occurrence that falls due meanwhile is skipped,
                # with a row saying so, rather than silently lost.
                if not rt.paused and self.effective_fire(rt) <= now:
                    plan.skips.append(Skip(task, "the previous run of this task is still in progress", True))
                continue
            instant = self.due_instant(rt)
            if instant > horizon:
                continue
            trigger: RunTrigger = "schedule" if self.effective_fire(rt) <= horizon else "run_task"
            work.append((task.id, instant, task.priority, trigger))
        ready: dict[int, tuple[int, RunTrigger, datetime]] = {}
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
            (
                Candidate(
                    task_id,
                    priority,
                    instant,
                    policy.period_of(policy.schedule_of(self.task(task_id)), instant),
                    self.tasks[task_id].passed_over_since,
                )
                for task_id, (priority, _, instant) in ready.items()
            ),
            now,
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


def _schedule_key(task: TaskPlan) -> tuple[int | None, str | None]:
    return (task.interval_seconds, task.cron_expression)
