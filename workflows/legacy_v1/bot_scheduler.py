"""The BotScheduler as it was before scheduler core v2, frozen so that histories it wrote replay.

Only `workflows.bot_scheduler.BotScheduler` runs it: for a run that started on this version (no
`core-v2` patch marker), until that run continues as new on v2. Do not change it.

Original description: one long-lived workflow per bot (workflow ID = bot ID).

It sleeps on one durable timer until the earliest due task (a little early: the task runner waits
for the exact instant), runs due tasks as activities in priority order, and wakes early when a
signal changes the plan. Each task's activity runs as its own asyncio task, so a task waiting in
Temporal's retry backoff never holds up the bot's other tasks.

"No overlap" applies to attempts that are actually executing: the workflow starts one exclusive
task at a time and starts the next when that one finishes or reports (signal `task_progress`) that
it is backing off; the task runner additionally holds a per-bot PostgreSQL advisory lock while an
exclusive attempt runs, so a retry that Temporal starts later cannot overlap another task either.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from workflows.legacy_v1 import policy
    from workflows.legacy_v1.models import (
        ACTIVITY_LOAD_PLAN,
        ACTIVITY_RECORD_SKIPPED,
        ACTIVITY_RUN_TASK,
        ACTIVITY_SET_PAUSED,
        ACTIVITY_SETTLE_LOST_RUN,
        BotPlan,
        LoadPlanInput,
        LostRunInput,
        RunTrigger,
        SchedulerCarry,
        SchedulerInput,
        SchedulerStatus,
        SetPausedInput,
        SettleResult,
        SkipRunInput,
        TaskFailure,
        TaskIdArg,
        TaskPlan,
        TaskProgress,
        TaskRunRequest,
        TaskRunResult,
    )
    from workflows.legacy_v1.scheduler_state import SchedulerState, Skip


async def bookkeeping(name: str, arg: Any, result_type: type | None, summary: str) -> Any:
    """A small database activity (plan load, skipped row, pause flag): retried until it lands."""
    return await workflow.execute_activity(
        name,
        arg,
        result_type=result_type,
        summary=summary,
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
    )


# A timer this close to firing is never cancelled (see `_set_alarm`).
IMMINENT = timedelta(seconds=5)


@dataclass
class ActiveRun:
    """One task's activity in flight (including Temporal's retry backoff)."""

    task_id: int
    activity_id: str
    request: TaskRunRequest
    phase: str = "running"  # running | retrying | waiting_lock
    reason: str | None = None
    handle: workflow.ActivityHandle[TaskRunResult] | None = None


class LegacySchedulerV1:
    def __init__(self, input: SchedulerInput) -> None:
        carry = input.carry or SchedulerCarry()
        self.state = SchedulerState(input.bot_id, input.options, carry)
        self.active: dict[int, ActiveRun] = {}
        self.side_jobs: set[asyncio.Task[None]] = set()
        self.paused_writes: list[SetPausedInput] = []
        self.wake = False
        self.alarms: dict[datetime, asyncio.Task[None]] = {}
        self.alarm_at: datetime | None = None
        self.activity_seq = 0

    # ----------------------------------------------------------------------------- main loop

    async def run(self, input: SchedulerInput) -> None:
        state = self.state
        while True:
            # Cleared before the work, not after it: a signal that lands while the plan loads
            # must wake the next wait at once.
            self.wake = False
            if state.reload_requested and not await self._load_plan():
                return  # the bot was deleted
            self._start_side_jobs()
            now = workflow.now()
            # Start/stop is told before the executions it lets start (the feed's order).
            state.announce(now, set(self.active))
            if state.running and not self._draining():
                self._dispatch(now)
            self._set_alarm(now)
            self._publish(now)
            await workflow.wait_condition(lambda: self.wake)
            # Checked after a wait, so every run does some work before handing over.
            if self._should_continue_as_new():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    SchedulerInput(bot_id=state.bot_id, options=state.options, carry=state.carry())
                )

    async def _load_plan(self) -> bool:
        state = self.state
        state.reload_requested = False
        asked_before = state.pending_ids()
        request = LoadPlanInput(bot_id=state.bot_id, keep_execution_prefixes=self._live_prefixes())
        plan: BotPlan = await bookkeeping(ACTIVITY_LOAD_PLAN, request, BotPlan, "load task definitions")
        if not plan.exists:
            state.emit_log(workflow.now(), "warn", "bot no longer exists; scheduler exits")
            for run in self.active.values():
                self._cancel(run)
            await workflow.wait_condition(lambda: not self.active and not self.side_jobs)
            return False
        removed = state.merge_plan(plan, workflow.now(), workflow.random(), asked_before)
        for task_id in removed:
            if task_id in self.active:
                self._cancel(self.active[task_id])
        return True

    def _draining(self) -> bool:
        return workflow.info().get_current_history_length() >= self.state.options.drain_after_events

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        wanted = (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= self.state.options.continue_after_events
        )
        idle = not self.active and not self.side_jobs and not self.paused_writes
        return wanted and idle and not self.state.reload_requested

    # ------------------------------------------------------------------------------ dispatch

    def _dispatch(self, now: datetime) -> None:
        state = self.state
        horizon = now + state.early_wake
        busy = {task_id: run.phase for task_id, run in self.active.items()}
        decision = state.plan_dispatch(now, horizon, busy)
        for skip in decision.skips:
            self._skip(skip, now)
        exclusive_busy = any(
            phase != "retrying" and not state.task(task_id).allow_overlap for task_id, phase in busy.items()
        )
        for start in decision.starts:
            if start.task.allow_overlap:
                self._start(start.task, start.trigger, now)
            elif not exclusive_busy:
                self._start(start.task, start.trigger, now)
                exclusive_busy = True
            else:
                state.reasons[start.task.id] = "waiting for the bot's running task to finish"

    def _start(self, task: TaskPlan, trigger: RunTrigger, now: datetime) -> None:
        state = self.state
        runtime = state.runtime(task.id)
        fire_at = now if trigger == "dependency" else state.due_instant(runtime)
        # A scheduled run uses up its occurrence; on-demand runs leave the schedule as it was.
        next_planned = (
            policy.advance(policy.schedule_of(task), runtime.nominal_due_at, max(now, fire_at))
            if trigger == "schedule"
            else runtime.nominal_due_at
        )
        runtime.requested_at = None
        self.activity_seq += 1
        activity_id = f"task-{task.id}-{state.generation}-{self.activity_seq}"
        request = TaskRunRequest(
            bot_id=state.bot_id,
            task_id=task.id,
            task_type=task.task_type,
            trigger=trigger,
            fire_at=fire_at,
            dispatched_at=now,
            next_planned_run_at=next_planned,
            plan_tier=state.plan_tier,
            lock_key=task.lock_key,
            allow_overlap=task.allow_overlap,
            bot_lock=not task.allow_overlap and self._exclusive_retrying(),
            rate_limit_endpoint=task.rate_limit_endpoint,
            min_rate_limit_remaining=task.min_rate_limit_remaining,
            timeout_seconds=task.timeout_seconds,
            max_attempts=task.max_retries + 1,
        )
        run = ActiveRun(task.id, activity_id, request)
        run.handle = workflow.start_activity(
            ACTIVITY_RUN_TASK,
            request,
            result_type=TaskRunResult,
            activity_id=activity_id,
            start_to_close_timeout=policy.start_to_close(task, state.early_wake),
            heartbeat_timeout=timedelta(seconds=state.options.heartbeat_timeout_seconds),
            retry_policy=policy.retry_policy(task),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            summary=f"{task.label} ({trigger})",
        )
        self.active[task.id] = run
        state.reasons.pop(task.id, None)
        state.emit_entity(now, "task_execution", "started", None, task.id)
        job = asyncio.create_task(self._await_run(task, run))
        self.side_jobs.add(job)
        job.add_done_callback(self._job_done)

    def _exclusive_retrying(self) -> bool:
        """Whether an exclusive task is in a retry cycle: its next attempt may start at any time."""
        return any(
            run.phase == "retrying" and not self.state.task(task_id).allow_overlap
            for task_id, run in self.active.items()
        )

    async def _await_run(self, task: TaskPlan, run: ActiveRun) -> None:
        assert run.handle is not None
        try:
            result = await run.handle
        except ActivityError as error:
            self._on_failure(task, run, error)
        except asyncio.CancelledError:
            self.state.on_cancelled(task.id, workflow.now())
        else:
            self._on_result(task, run, result)
        finally:
            self.active.pop(task.id, None)

    def _on_result(self, task: TaskPlan, run: ActiveRun, result: TaskRunResult) -> None:
        state, now = self.state, workflow.now()
        if result.outcome == "gone":
            state.forget(task.id)
            state.reload_requested = True
        elif result.outcome == "postponed":
            state.on_postponed(task.id, run.request, result, now)
        else:
            state.on_completed(task.id, run.request, result, now, workflow.random())

    def _on_failure(self, task: TaskPlan, run: ActiveRun, error: ActivityError) -> None:
        state, now = self.state, workflow.now()
        cause = error.cause
        if isinstance(cause, CancelledError):
            state.on_cancelled(task.id, now)
            return
        failure = _task_failure(cause)
        if failure is not None and failure.final:
            state.on_failed(task.id, run.request, failure, now, workflow.random())
            return
        # The runner did not settle this run: its worker vanished, the attempt timed out, or the
        # runner failed unexpectedly. Close its rows and count the failure from here.
        reason = failure.error if failure is not None else f"attempt lost without a result: {cause or error}"
        state.on_failed(task.id, run.request, TaskFailure(final=True, error=reason), now, workflow.random())
        execution_id = failure.execution_id if failure is not None else None
        self._spawn(self._settle_lost_run(task.id, run.request, reason, execution_id))

    def _skip(self, skip: Skip, now: datetime) -> None:
        due_at = self.state.due_instant(self.state.runtime(skip.task.id))
        next_planned = self.state.on_skipped(skip, now, workflow.random())
        request = SkipRunInput(
            bot_id=self.state.bot_id,
            task_id=skip.task.id,
            task_type=skip.task.task_type,
            due_at=min(due_at, now),
            reason=skip.reason,
            next_planned_run_at=next_planned,
        )
        self._spawn(self._record_skipped(request))

    async def _record_skipped(self, request: SkipRunInput) -> None:
        result = await bookkeeping(ACTIVITY_RECORD_SKIPPED, request, SettleResult, "record skipped run")
        self.state.emit_entity(
            workflow.now(),
            "task_execution",
            "skipped",
            result.execution_id,
            request.task_id,
            reason=request.reason,
        )

    async def _settle_lost_run(
        self, task_id: int, request: TaskRunRequest, reason: str, execution_id: int | None
    ) -> None:
        settle = LostRunInput(
            bot_id=self.state.bot_id,
            task_id=task_id,
            keep_execution_prefixes=self._live_prefixes(),
            reason=reason,
            next_planned_run_at=request.next_planned_run_at,
            execution_id=execution_id,
        )
        result = await bookkeeping(ACTIVITY_SETTLE_LOST_RUN, settle, SettleResult, "close lost attempt")
        self.state.on_settled(task_id, result, workflow.now())

    # --------------------------------------------------------------------------- side jobs

    def _spawn(self, coroutine: Any) -> None:
        job: asyncio.Task[None] = asyncio.create_task(coroutine)
        self.side_jobs.add(job)
        job.add_done_callback(self._job_done)

    def _job_done(self, job: asyncio.Task[None]) -> None:
        self.side_jobs.discard(job)
        self.wake = True

    def _start_side_jobs(self) -> None:
        writes, self.paused_writes = self.paused_writes, []
        for write in writes:
            self._spawn(
                bookkeeping(
                    ACTIVITY_SET_PAUSED,
                    write,
                    None,
                    f"{'pause' if write.paused else 'resume'} #{write.task_id}",
                )
            )

    def _cancel(self, run: ActiveRun) -> None:
        if run.handle is not None and not run.handle.done():
            run.handle.cancel()

    def _live_prefixes(self) -> list[str]:
        info = workflow.info()
        return [f"{info.workflow_id}/{info.run_id}/{run.activity_id}/" for run in self.active.values()]

    # ------------------------------------------------------------------------- alarm, web UI

    def _set_alarm(self, now: datetime) -> None:
        """Keep a durable timer for the earliest task waiting for its time, and no other.

        A timer about to fire is left to fire (its wake-up is a no-op round) rather than
        cancelled: cancelling a timer that fires while the workflow task is in progress is the
        one spot where the time-skipping test server wedges (temporalio/sdk-java#3088).
        """
        due = self.state.next_due(now, set(self.active)) if self.state.running else None
        at = due - self.state.early_wake if due is not None else None
        for deadline, timer in list(self.alarms.items()):
            if deadline != at and deadline - now > IMMINENT:
                timer.cancel()
                del self.alarms[deadline]
        if at is not None and at not in self.alarms:
            self.alarms[at] = asyncio.create_task(self._sleep_until(at, now))
        self.alarm_at = at

    async def _sleep_until(self, at: datetime, now: datetime) -> None:
        await workflow.sleep(max(at - now, timedelta(milliseconds=1)), summary=self.state.next_label(now))
        self.alarms.pop(at, None)
        self.wake = True

    def _publish(self, now: datetime) -> None:
        state = self.state
        state.announce(now, set(self.active))
        updates = state.search_attribute_updates()
        if updates and state.options.search_attributes:
            workflow.upsert_search_attributes(updates)
        workflow.set_current_details(state.describe(now, self.alarm_at, self._running_labels()))

    def _running_labels(self) -> list[str]:
        return [f"{self.state.task(i).label} [{run.phase}]" for i, run in self.active.items()]

    # ----------------------------------------------------------------------- signals, query

    def start(self) -> None:
        if self.state.start(workflow.now()):
            self.wake = True

    def stop(self) -> None:
        if self.state.stop(workflow.now()):
            for run in self.active.values():
                self._cancel(run)
            self.wake = True

    def reload_tasks(self) -> None:
        self.state.reload_requested = True
        self.wake = True

    def run_task(self, arg: TaskIdArg) -> None:
        self.state.request_run(arg.task_id, workflow.now())
        self.wake = True

    def pause_task(self, arg: TaskIdArg) -> None:
        self._set_paused(arg.task_id, True)

    def resume_task(self, arg: TaskIdArg) -> None:
        self._set_paused(arg.task_id, False)

    def _set_paused(self, task_id: int, paused: bool) -> None:
        self.state.set_paused(task_id, paused, workflow.now())
        self.paused_writes.append(SetPausedInput(bot_id=self.state.bot_id, task_id=task_id, paused=paused))
        self.wake = True

    def task_progress(self, progress: TaskProgress) -> None:
        run = self.active.get(progress.task_id)
        if run is None or run.activity_id != progress.activity_id:
            return  # a late report from an attempt that is over
        run.phase = progress.state
        run.reason = progress.error
        if progress.state == "retrying":
            task = self.state.task(progress.task_id)
            retry_at = workflow.now() + policy.retry_delay(task, progress.attempt)
            run.reason = (
                f"attempt {progress.attempt} failed ({progress.error}); next try ~{retry_at.isoformat()}"
            )
            self.state.on_retrying(progress, workflow.now())
        self.wake = True

    def status(self) -> SchedulerStatus:
        phases = {task_id: (run.phase, run.reason) for task_id, run in self.active.items()}
        return self.state.status(workflow.now(), phases)


def _task_failure(cause: BaseException | None) -> TaskFailure | None:
    """The runner's own account of a failed attempt, carried in the ApplicationError details."""
    if not isinstance(cause, ApplicationError) or not cause.details:
        return None
    try:
        return TaskFailure.model_validate(cause.details[0])
    except ValueError:
        return None
