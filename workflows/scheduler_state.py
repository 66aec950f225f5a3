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

from workflows import policy
from workflows.models import (
    AttemptRequest,
    AttemptResult,
    BotPlan,
    RunState,
    RunTrigger,
    SchedulerCarry,
    TaskPlan,
    TaskRuntime,
)
from workflows.policy import Candidate, DependencyVerdict, DependencyView
from workflows.scheduler_view import MAX_ERROR_TEXT, SchedulerView

# A postponement never ends sooner than this, so a clock a little behind cannot spin the loop.
MIN_POSTPONEMENT = timedelta(seconds=1)
# At most this many rows for occurrences jumped over at once (a long outage of a fast task).
MAX_MISSED_ROWS = 50
REASON_MISSED = "missed: the scheduler could not act in time (worker or server unavailable)"


@dataclass(frozen=True)
class Start:
    task: TaskPlan
    trigger: RunTrigger


@dataclass(frozen=True)
class Skip:
    task: TaskPlan
    reason: str
    consumes: bool


# Why a run ends without finishing its attempts.
REASON_STOPPED = "the scheduler was stopped"
REASON_REMOVED = "the task definition was deleted or deactivated"
REASON_BOT_DELETED = "the bot was deleted"


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

    # -------------------------------------------------------------------------------- runs

    def new_run(self, task: TaskPlan, trigger: RunTrigger, now: datetime, rng: random.Random) -> RunState:
        """Open a run of `task`; a scheduled one uses up its occurrence now (the next is planned)."""
        rt = self.tasks[task.id]
        fire_at = now if trigger == "dependency" else self.due_instant(rt)
        next_planned: datetime | None = None
        if trigger == "schedule":
            next_planned = self._advance(rt, task, max(now, fire_at))
            self._set_nominal(rt, task, next_planned, rng)
            rt.not_before = None
            rt.not_before_reason = None
        rt.requested_at = None
        rt.passed_over_since = None
        self.run_seq += 1
        run = RunState(
            key=f"{self.bot_id}/{self.chain_id}/{self.run_seq}",
            task=task,
            trigger=trigger,
            fire_at=fire_at,
            dispatched_at=now,
            next_planned_run_at=next_planned,
        )
        self.runs[task.id] = run
        self.reasons.pop(task.id, None)
        return run

    def attempt_request(self, run: RunState, fire_at: datetime, now: datetime) -> AttemptRequest:
        """Begin the run's next attempt."""
        run.attempt += 1
        run.phase = "running"
        run.in_flight = True
        run.retry_at = None
        task = run.task
        return AttemptRequest(
            bot_id=self.bot_id,
            task_id=task.id,
            task_type=task.task_type,
            trigger=run.trigger,
            execution_key=run.execution_key(),
            attempt=run.attempt,
            due_at=run.fire_at,
            fire_at=fire_at,
            dispatched_at=now,
            final=policy.is_final_failure(task, run.failures + 1),
            next_planned_run_at=run.next_planned_run_at,
            schedule_version=self.tasks[task.id].schedule_version if task.id in self.tasks else 0,
            plan_tier=self.plan_tier,
            lock_key=task.lock_key,
            rate_limit_endpoint=task.rate_limit_endpoint,
            min_rate_limit_remaining=task.min_rate_limit_remaining,
            timeout_seconds=task.timeout_seconds,
        )

    def on_attempt_result(self, run: RunState, result: AttemptResult, now: datetime) -> bool:
        """Apply an attempt's outcome; True when the run is over."""
        run.in_flight = False
        task_id = run.task.id
        outcome = result.outcome
        if outcome == "completed":
            self._completed(run, result, now)
        elif outcome == "postponed":
            self._postponed(run, result, now)
        elif outcome == "failed":
            return self._failed(run, result, now)
        elif outcome == "lost":
            return self._lost(run, result, now)
        elif outcome == "gone":
            self.reload_requested = True
            self.emit_entity(
                now, "task_execution", "cancelled", result.execution_id, task_id, reason=result.reason
            )
        else:  # cancelled
            self.emit_entity(
                now,
                "task_execution",
                "cancelled",
                result.execution_id,
                task_id,
                reason=result.reason or run.cancel_reason,
            )
        self.end_run(run)
        return True

    def passed_over(self, task_id: int, now: datetime) -> None:
        """A ready task left waiting for another exclusive one (for ageing)."""
        rt = self.tasks.get(task_id)
        if rt is not None and rt.passed_over_since is None:
            rt.passed_over_since = now

    def end_run(self, run: RunState) -> None:
        if self.runs.get(run.task.id) is run:
            del self.runs[run.task.id]

    def _completed(self, run: RunState, result: AttemptResult, now: datetime) -> None:
        rt = self.tasks.get(run.task.id)
        if rt is not None:
            rt.last_success_at = result.last_success_at or now
            rt.consecutive_failures = 0
            rt.last_error = None
        self.emit_entity(now, "task_execution", "completed", result.execution_id, run.task.id)

    def _postponed(self, run: RunState, result: AttemptResult, now: datetime) -> None:
        rt = self.tasks.get(run.task.id)
        if rt is not None:
            until = result.postponed_until or now
            rt.not_before = max(until, now + MIN_POSTPONEMENT)
            rt.not_before_reason = result.reason
            # The run is still owed (its occurrence was used up when it started): it runs once
            # the window resets.
            rt.requested_at = run.dispatched_at
        self.emit_entity(
            now, "task_execution", "postponed", result.execution_id, run.task.id, reason=result.reason
        )

    def _failed(self, run: RunState, result: AttemptResult, now: datetime) -> bool:
        task_id = run.task.id
        run.failures += 1
        run.losses = 0
        rt = self.tasks.get(task_id)
        error = (result.reason or "failed")[:MAX_ERROR_TEXT]
        if rt is not None:
            rt.last_error = error
        if result.final or policy.is_final_failure(run.task, run.failures):
            if rt is not None:
                rt.consecutive_failures = result.consecutive_failures or rt.consecutive_failures + 1
                rt.last_failure_at = now
            self.emit_entity(now, "task_execution", "failed", result.execution_id, task_id, reason=error)
            if result.deactivated:
                self._deactivated(task_id, result.consecutive_failures, result.log_id, now)
            self.end_run(run)
            return True
        run.retry_at = now + policy.retry_delay(run.task, run.failures)
        run.phase = "retrying"
        run.reason = f"attempt {run.attempt} failed ({error}); next try at {run.retry_at.isoformat()}"
        self.emit_entity(now, "task_execution", "retrying", result.execution_id, task_id, attempt=run.attempt)
        return False

    def _lost(self, run: RunState, result: AttemptResult, now: datetime) -> bool:
        run.losses += 1
        run.retry_at = now + policy.loss_delay(run.losses)
        run.phase = "retrying"
        run.reason = f"attempt {run.attempt} lost ({result.reason}); starting it again"
        self.emit_entity(
            now, "task_execution", "lost", result.execution_id, run.task.id, reason=result.reason
        )
        return False

    def cancel_run(self, run: RunState, reason: str) -> None:
        run.cancel_reason = run.cancel_reason or reason
        run.reason = f"cancelling: {run.cancel_reason}"

    def on_progress(self, run: RunState, state: str, error: str | None) -> None:
        if run.in_flight and state in ("running", "waiting_lock"):
            run.phase = state  # type: ignore[assignment]
            run.reason = error

    def on_skipped(self, skip: Skip, now: datetime, rng: random.Random) -> tuple[datetime, datetime]:
        """Mark a skipped occurrence (a failure for its dependents); return (due at, next plan)."""
        rt = self.tasks[skip.task.id]
        due_at = min(self.due_instant(rt), now)
        rt.last_failure_at = now
        rt.last_error = f"skipped: {skip.reason}"[:MAX_ERROR_TEXT]
        if skip.consumes:
            nominal = self._advance(rt, skip.task, max(now, rt.fire_at))
            self._set_nominal(rt, skip.task, nominal, rng)
        else:
            rt.requested_at = None
        return due_at, rt.nominal_due_at

    def _advance(self, rt: TaskRuntime, task: TaskPlan, now: datetime) -> datetime:
        """The occurrence after the one due now; those jumped over while the bot was running are
        kept in `missed`, so each gets a row."""
        schedule = policy.schedule_of(task)
        following = policy.advance(schedule, rt.nominal_due_at, now)
        jumped = policy.skipped_between(schedule, rt.nominal_due_at, following, MAX_MISSED_ROWS)
        since = self.running_since
        jumped = [due for due in jumped if since is None or due >= since]
        if jumped:
            reason = REASON_MISSED
            if rt.not_before is not None:
                reason = f"rate limited, postponed until the window resets: {rt.not_before_reason}"
            self.missed.append((task, jumped, reason))
        return following

    def next_skip_key(self) -> str:
        self.run_seq += 1
        return f"{self.bot_id}/{self.chain_id}/{self.run_seq}/skip"

    def _deactivated(self, task_id: int, failures: int, log_id: int | None, now: datetime) -> None:
        label = self.label(task_id)
        self.forget(task_id)
        self.emit_entity(now, "task_definition", "deactivated", task_id, task_id)
        content = f"task {label} deactivated after {failures} consecutive failures"
        self.emit_log(now, "warn", content, log_id)

    # ------------------------------------------------------------------------------ control

    def start(self, now: datetime) -> bool:
        if self.running:
            return False
        self.running = True
        self.running_since = now
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
            chain_id=self.chain_id,
            run_seq=self.run_seq,
            runs=[run for run in self.runs.values() if not run.in_flight],
            running_since=self.running_since,
        )


def _schedule_key(task: TaskPlan) -> tuple[int | None, str | None]:
    return (task.interval_seconds, task.cron_expression)
