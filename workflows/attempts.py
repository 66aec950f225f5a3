"""The attempts of a bot's runs, inside `BotScheduler`: start each as one activity, turn however it
ended into an `AttemptResult`, and write the rows of runs that end without the runner reporting
(cancelled, lost, skipped). Workflow code: deterministic, no I/O but through activities.

The scheduling loop (what is due, when to wake) stays in `bot_scheduler`; this keeps the activity
handles and the bookkeeping calls that go with them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from workflows import policy
    from workflows.models import (
        ACTIVITY_RECORD_SKIP,
        ACTIVITY_RUN_ATTEMPT,
        ACTIVITY_SETTLE_ATTEMPT,
        AttemptRequest,
        AttemptResult,
        RunState,
        SettleAttemptInput,
        SkipInput,
    )
    from workflows.scheduler_plan import Skip
    from workflows.scheduler_state import REASON_STOPPED, SchedulerState

# Bookkeeping activities are idempotent, so they are retried until they land.
BOOKKEEPING_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30))
# Each attempt runs once: the workflow decides what happens after it.
ONE_ATTEMPT = RetryPolicy(maximum_attempts=1)

Spawn = Callable[[Coroutine[Any, Any, None]], None]


async def bookkeeping(
    name: str, arg: Any, result_type: type | None, summary: str, *, local: bool = False
) -> Any:
    """A small idempotent database activity (plan load, skipped row, settling an attempt); `local`
    runs it inside the workflow task that asks for it (no activity task, no second workflow task)."""
    execute = workflow.execute_local_activity if local else workflow.execute_activity
    return await execute(
        name,
        arg,
        result_type=result_type,
        summary=summary,
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=BOOKKEEPING_RETRY,
    )


class Attempts:
    """The bot's attempts in flight (by execution key) and the bookkeeping of their ends.

    `spawn` runs a coroutine as one of the scheduler's side jobs: the scheduler wakes when it ends
    and does not continue as new while any is pending.
    """

    def __init__(self, state: SchedulerState, spawn: Spawn) -> None:
        self.state = state
        self.spawn = spawn
        self.handles: dict[str, workflow.ActivityHandle[AttemptResult]] = {}

    def exclusive_executing(self) -> bool:
        return any(run.in_flight and not run.task.allow_overlap for run in self.state.runs.values())

    def live_prefixes(self) -> list[str]:
        return [f"{run.key}/" for run in self.state.runs.values() if run.in_flight]

    # ------------------------------------------------------------------------- attempts

    def start(self, run: RunState, fire_at: datetime, now: datetime) -> None:
        request = self.state.attempt_request(run, fire_at, now)
        handle = workflow.start_activity(
            ACTIVITY_RUN_ATTEMPT,
            request,
            result_type=AttemptResult,
            activity_id=request.execution_key,
            start_to_close_timeout=policy.start_to_close(run.task, self.state.early_wake),
            heartbeat_timeout=timedelta(seconds=self.state.options.heartbeat_timeout_seconds),
            retry_policy=ONE_ATTEMPT,
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            summary=f"{run.task.label} ({run.trigger}, attempt {run.attempt})",
        )
        self.handles[request.execution_key] = handle
        self.spawn(self._await(run, request, handle))

    def cancel(self, run: RunState) -> None:
        """Ask the run's attempt, if one is executing, to stop (its end is settled as cancelled)."""
        handle = self.handles.get(run.execution_key())
        if run.in_flight and handle is not None and not handle.done():
            handle.cancel()

    async def _await(
        self, run: RunState, request: AttemptRequest, handle: workflow.ActivityHandle[AttemptResult]
    ) -> None:
        try:
            result = await handle
        except ActivityError as error:
            result = await self._unreported(run, request, error)
        except asyncio.CancelledError:
            result = await self._settle(run, request, "cancelled", run.cancel_reason or REASON_STOPPED)
        finally:
            self.handles.pop(request.execution_key, None)
        if run.cancel_reason and result.outcome == "failed" and not result.final:
            # Failed while being cancelled: there is no retry to wait for.
            result = await self._settle(run, request, "cancelled", run.cancel_reason)
        self.state.on_attempt_result(run, result, workflow.now())

    async def _unreported(
        self, run: RunState, request: AttemptRequest, error: ActivityError
    ) -> AttemptResult:
        """An attempt that ended without a result: the runner's failure, a timeout or a cancel."""
        cause = error.cause
        if isinstance(cause, ApplicationError) and cause.details:
            try:
                return AttemptResult.model_validate(cause.details[0])
            except ValueError:
                pass
        if run.cancel_reason is not None or isinstance(cause, CancelledError):
            return await self._settle(run, request, "cancelled", run.cancel_reason or REASON_STOPPED)
        if isinstance(cause, TimeoutError):
            reason = "worker lost: the attempt stopped heartbeating"
        elif isinstance(cause, ApplicationError) and cause.type == policy.ATTEMPT_LOST:
            reason = cause.message
        else:
            # The runner itself failed (e.g. the database was unreachable): not the handler's fault.
            reason = f"the attempt could not run: {cause or error}"
        if run.losses + 1 < policy.LOSSES_PER_FAILURE:
            return await self._settle(run, request, "lost", reason)
        # Attempts of this run keep vanishing (a handler that kills its worker): one failure.
        final = policy.is_final_failure(run.task, run.failures + 1)
        reason = f"{policy.LOSSES_PER_FAILURE} attempts lost in a row; last: {reason}"
        return await self._settle(run, request, "failed" if final else "retrying", reason)

    async def _settle(
        self, run: RunState, request: AttemptRequest, status: str, reason: str
    ) -> AttemptResult:
        """Write (or read back) the row of an attempt that did not report, idempotently."""
        return await self._settle_key(
            run, request.execution_key, request.attempt, request.fire_at, status, reason
        )

    async def _settle_key(
        self, run: RunState, execution_key: str, attempt: int, due_at: datetime, status: str, reason: str
    ) -> AttemptResult:
        rt = self.state.tasks.get(run.task.id)
        settle = SettleAttemptInput(
            bot_id=self.state.bot_id,
            task_id=run.task.id,
            task_type=run.task.task_type,
            execution_key=execution_key,
            attempt=attempt,
            due_at=due_at,
            status=status,
            reason=reason,
            next_planned_run_at=run.next_planned_run_at,
            schedule_version=rt.schedule_version if rt is not None else 0,
        )
        result: AttemptResult = await bookkeeping(
            ACTIVITY_SETTLE_ATTEMPT, settle, AttemptResult, f"settle attempt {attempt} ({status})"
        )
        return result

    # ------------------------------------------------------------- runs ended without an attempt

    def close_cancelled_runs(self) -> None:
        """A run told to stop while waiting to retry ends now, its last row closed as cancelled."""
        for run in list(self.state.runs.values()):
            if run.cancel_reason is None or run.in_flight or run.phase == "starting":
                continue
            self.state.end_run(run)
            if run.attempt == 0:
                continue
            self.spawn(self._close_waiting_run(run))

    async def _close_waiting_run(self, run: RunState) -> None:
        reason = run.cancel_reason or REASON_STOPPED
        result = await self._settle_key(
            run, run.execution_key(), run.attempt, run.fire_at, "cancelled", reason
        )
        self.state.emit_entity(
            workflow.now(),
            "task_execution",
            "cancelled",
            result.execution_id,
            run.task.id,
            reason=run.cancel_reason,
        )

    def skip(self, skip: Skip, now: datetime) -> None:
        due_at, next_planned = self.state.on_skipped(skip, now, workflow.random())
        rt = self.state.tasks[skip.task.id]
        request = SkipInput(
            bot_id=self.state.bot_id,
            task_id=skip.task.id,
            task_type=skip.task.task_type,
            execution_key=self.state.next_skip_key(),
            due_at=due_at,
            reason=skip.reason,
            next_planned_run_at=next_planned if skip.consumes else None,
            schedule_version=rt.schedule_version,
        )
        self.spawn(self._record_skipped(request))

    def record_missed(self) -> None:
        """One `skipped` row per occurrence jumped over, written by one activity per task."""
        missed, self.state.missed = self.state.missed, []
        for task, due_ats, reason in missed:
            rt = self.state.tasks.get(task.id)
            request = SkipInput(
                bot_id=self.state.bot_id,
                task_id=task.id,
                task_type=task.task_type,
                execution_key=self.state.next_skip_key(),
                due_at=due_ats[0],
                reason=reason,
                schedule_version=rt.schedule_version if rt is not None else 0,
                more_due_at=due_ats[1:],
            )
            self.spawn(self._record_skipped(request))

    async def _record_skipped(self, request: SkipInput) -> None:
        result: AttemptResult = await bookkeeping(ACTIVITY_RECORD_SKIP, request, AttemptResult, "record skip")
        self.state.emit_entity(
            workflow.now(),
            "task_execution",
            "skipped",
            result.execution_id,
            request.task_id,
            reason=request.reason,
        )
