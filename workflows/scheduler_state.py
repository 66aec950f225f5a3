"""The BotScheduler's bookkeeping, kept apart from the Temporal calls in `bot_scheduler.py`.

Deterministic: every time and random number comes in as an argument (`workflow.now()`,
`workflow.random()`). `SchedulerState` owns the runs (attempts, results, retries, skips) and start
and stop; its bases hold the plan and decide what starts (`SchedulerPlan`, `scheduler_plan.py`)
and render status and events (`SchedulerView`, `scheduler_view.py`); the workflow owns timers,
activities and signals.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from workflows import policy
from workflows.models import (
    AttemptRequest,
    AttemptResult,
    RunState,
    RunTrigger,
    SchedulerCarry,
    TaskPlan,
    TaskRuntime,
)
from workflows.scheduler_plan import SchedulerPlan, Skip
from workflows.scheduler_view import MAX_ERROR_TEXT

# A postponement never ends sooner than this, so a clock a little behind cannot spin the loop.
MIN_POSTPONEMENT = timedelta(seconds=1)
# At most this many rows for occurrences jumped over at once (a long outage of a fast task).
MAX_MISSED_ROWS = 50
REASON_MISSED = "missed: the scheduler could not act in time (worker or server unavailable)"


# Why a run ends without finishing its attempts.
REASON_STOPPED = "the scheduler was stopped"
REASON_REMOVED = "the task definition was deleted or deactivated"
REASON_BOT_DELETED = "the bot was deleted"


class SchedulerState(SchedulerPlan):
    """The scheduler's state and every change to it: its runs, their attempts and results, start
    and stop, and what it carries across continue-as-new."""

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
