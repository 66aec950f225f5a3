"""BotScheduler: one long-lived workflow per bot (workflow ID = bot ID).

It sleeps on one durable timer until the earliest due task or retry (a little early: the task
runner waits for the exact instant), runs due tasks in priority order, and wakes early when a
signal changes the plan.

Core v2: the workflow owns every attempt. An attempt is one activity that Temporal never retries;
the backoff between attempts is a durable timer here, so the workflow always knows whether a run
is executing, waiting for a lock or waiting to retry, and can carry a waiting run across
continue-as-new. An attempt lost with its worker (heartbeat timeout, worker shutdown) starts again
at once and does not count as a failure. A run carries the definition it started with, so a
definition deleted or edited meanwhile can never make this code look up something that has gone.
"No overlap" is enforced here: an exclusive attempt starts only while no other exclusive attempt
of the bot executes.

Runs that began before core v2 have no `core-v2` marker in their history; they replay and go on
with `workflows.legacy_v1` until they continue as new.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.attempts import Attempts, bookkeeping
    from workflows.legacy_v1.bot_scheduler import LegacySchedulerV1
    from workflows.legacy_v1.models import SchedulerInput as LegacyInput
    from workflows.legacy_v1.models import TaskIdArg as LegacyTaskId
    from workflows.legacy_v1.models import TaskProgress as LegacyProgress
    from workflows.models import (
        ACTIVITY_LOAD_PLAN,
        ACTIVITY_SET_PAUSED,
        PATCH_CORE_V2,
        PATCH_LOCAL_PLAN_LOAD,
        QUERY_STATUS,
        QUERY_STATUS_BRIEF,
        SIGNAL_PAUSE_TASK,
        SIGNAL_RELOAD_TASKS,
        SIGNAL_RESUME_TASK,
        SIGNAL_RUN_TASK,
        SIGNAL_START,
        SIGNAL_STOP,
        SIGNAL_TASK_PROGRESS,
        UPDATE_START,
        UPDATE_STOP,
        WORKFLOW_NAME,
        BotPlan,
        ControlAnswer,
        LoadPlanInput,
        RunState,
        SchedulerCarry,
        SchedulerInput,
        SchedulerStatus,
        SetPausedInput,
        TaskIdArg,
        TaskProgress,
    )
    from workflows.scheduler_state import (
        REASON_BOT_DELETED,
        REASON_REMOVED,
        REASON_STOPPED,
        SchedulerState,
    )

# A timer this close to firing is never cancelled (see `_set_alarm`).
IMMINENT = timedelta(seconds=5)


@workflow.defn(name=WORKFLOW_NAME)
class BotScheduler:
    @workflow.init
    def __init__(self, input: SchedulerInput) -> None:
        # A history without the marker was written by the pre-v2 code: replay it with that code.
        self.legacy: LegacySchedulerV1 | None = None
        if not workflow.patched(PATCH_CORE_V2):
            self.legacy = LegacySchedulerV1(LegacyInput.model_validate(input.model_dump(mode="json")))
        carry = input.carry or SchedulerCarry()
        self.state = SchedulerState(input.bot_id, input.options, carry)
        self.side_jobs: set[asyncio.Task[None]] = set()
        self.attempts = Attempts(self.state, self._spawn)
        self.paused_writes: list[SetPausedInput] = []
        self.wake = False
        self.alarms: dict[datetime, asyncio.Task[None]] = {}
        self.alarm_at: datetime | None = None

    # ----------------------------------------------------------------------------- main loop

    @workflow.run
    async def run(self, input: SchedulerInput) -> None:
        if self.legacy is not None:
            await self.legacy.run(LegacyInput.model_validate(input.model_dump(mode="json")))
            return
        state = self.state
        if state.chain_id is None:
            state.chain_id = str(workflow.uuid4())[:8]
        if state.running and state.running_since is None:
            state.running_since = workflow.now()
        while True:
            # Cleared before the work, not after it: a signal that lands while the plan loads
            # must wake the next wait at once.
            self.wake = False
            if state.reload_requested and not await self._load_plan():
                return  # the bot was deleted
            self._start_side_jobs()
            now = workflow.now()
            # Start/stop is told before the executions it lets start (the feed's order).
            state.announce(now)
            self.attempts.close_cancelled_runs()
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
        request = LoadPlanInput(bot_id=state.bot_id, keep_execution_prefixes=self.attempts.live_prefixes())
        plan = await self._fetch_plan(request)
        if not plan.exists:
            state.emit_log(workflow.now(), "warn", "bot no longer exists; scheduler exits")
            for run in list(state.runs.values()):
                state.cancel_run(run, REASON_BOT_DELETED)
                self._cancel_attempt(run)
            await workflow.wait_condition(lambda: not self.attempts.handles and not self.side_jobs)
            return False
        removed = state.merge_plan(plan, workflow.now(), workflow.random(), asked_before)
        for task_id in removed:
            orphan = state.runs.get(task_id)
            if orphan is not None:
                state.cancel_run(orphan, REASON_REMOVED)
                self._cancel_attempt(orphan)
        return True

    async def _fetch_plan(self, request: LoadPlanInput) -> BotPlan:
        """The definitions from PostgreSQL, by a local activity: a bot's first round (and every
        reload) is one workflow task instead of two plus an activity task. Runs begun before the
        patch replay with their activity."""
        local = workflow.patched(PATCH_LOCAL_PLAN_LOAD)
        plan: BotPlan = await bookkeeping(
            ACTIVITY_LOAD_PLAN, request, BotPlan, "load task definitions", local=local
        )
        return plan

    def _draining(self) -> bool:
        return workflow.info().get_current_history_length() >= self.state.options.drain_after_events

    def _should_continue_as_new(self) -> bool:
        """Past the history budget, with no attempt in flight (waiting runs are carried)."""
        info = workflow.info()
        wanted = (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= self.state.options.continue_after_events
        )
        idle = not self.attempts.handles and not self.side_jobs and not self.paused_writes
        cancelling = any(run.cancel_reason for run in self.state.runs.values())
        return wanted and idle and not cancelling and not self.state.reload_requested

    # ------------------------------------------------------------------------------ dispatch

    def _dispatch(self, now: datetime) -> None:
        state = self.state
        horizon = now + state.early_wake
        busy = {task_id: run.phase for task_id, run in state.runs.items()}
        decision = state.plan_dispatch(now, horizon, busy)
        for skip in decision.skips:
            self.attempts.skip(skip, now)
        exclusive_busy = self.attempts.exclusive_executing()
        # Runs waiting to retry whose time has come go first: they were due before anything new.
        for run in sorted(state.runs.values(), key=lambda r: (r.retry_at or now, -r.task.priority)):
            if run.in_flight or run.cancel_reason or run.retry_at is None or run.retry_at > horizon:
                continue
            if not run.task.allow_overlap:
                if exclusive_busy:
                    run.reason = "waiting for the bot's running task to finish"
                    continue
                exclusive_busy = True
            self.attempts.start(run, max(run.retry_at, now), now)
        for start in decision.starts:
            if not start.task.allow_overlap:
                if exclusive_busy:
                    state.reasons[start.task.id] = "waiting for the bot's running task to finish"
                    state.passed_over(start.task.id, now)
                    continue
                exclusive_busy = True
            run = state.new_run(start.task, start.trigger, now, workflow.random())
            state.emit_entity(now, "task_execution", "started", None, start.task.id)
            self.attempts.start(run, run.fire_at, now)
        self.attempts.record_missed()

    # --------------------------------------------------------------------------- side jobs

    def _spawn(self, coroutine: Any) -> None:
        job: asyncio.Task[None] = asyncio.create_task(coroutine)
        self.side_jobs.add(job)
        job.add_done_callback(self._job_done)

    def _job_done(self, job: asyncio.Task[None]) -> None:
        self.side_jobs.discard(job)
        self.wake = True

    def _cancel_attempt(self, run: RunState) -> None:
        self.attempts.cancel(run)
        self.wake = True

    def _start_side_jobs(self) -> None:
        writes, self.paused_writes = self.paused_writes, []
        for write in writes:
            summary = f"{'pause' if write.paused else 'resume'} #{write.task_id}"
            self._spawn(bookkeeping(ACTIVITY_SET_PAUSED, write, None, summary))

    # ------------------------------------------------------------------------- alarm, web UI

    def _set_alarm(self, now: datetime) -> None:
        """Keep a durable timer for the earliest task or retry waiting for its time, and no other.

        A timer about to fire is left to fire (its wake-up is a no-op round) rather than
        cancelled: cancelling a timer that fires while the workflow task is in progress is the
        one spot where the time-skipping test server wedges (temporalio/sdk-java#3088).
        """
        due = self.state.next_due(now) if self.state.running else None
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
        state.announce(now)
        updates = state.search_attribute_updates()
        if updates and state.options.search_attributes:
            workflow.upsert_search_attributes(updates)
        workflow.set_current_details(state.describe(now, self.alarm_at, self._running_labels()))

    def _running_labels(self) -> list[str]:
        return [f"{run.task.label} [{run.phase}]" for run in self.state.runs.values()]

    # ----------------------------------------------------------------------- signals, query

    @workflow.signal(name=SIGNAL_START)
    def start(self) -> None:
        if self.legacy is not None:
            return self.legacy.start()
        if self.state.start(workflow.now()):
            self.wake = True

    @workflow.signal(name=SIGNAL_STOP)
    def stop(self) -> None:
        if self.legacy is not None:
            return self.legacy.stop()
        if self.state.stop(workflow.now()):
            for run in list(self.state.runs.values()):
                self.state.cancel_run(run, REASON_STOPPED)
                self._cancel_attempt(run)
            self.wake = True

    @workflow.signal(name=SIGNAL_RELOAD_TASKS)
    def reload_tasks(self) -> None:
        if self.legacy is not None:
            return self.legacy.reload_tasks()
        self.state.reload_requested = True
        self.wake = True

    @workflow.signal(name=SIGNAL_RUN_TASK)
    def run_task(self, arg: TaskIdArg) -> None:
        if self.legacy is not None:
            return self.legacy.run_task(LegacyTaskId(task_id=arg.task_id))
        self.state.request_run(arg.task_id, workflow.now())
        self.wake = True

    @workflow.signal(name=SIGNAL_PAUSE_TASK)
    def pause_task(self, arg: TaskIdArg) -> None:
        if self.legacy is not None:
            return self.legacy.pause_task(LegacyTaskId(task_id=arg.task_id))
        self._set_paused(arg.task_id, True)

    @workflow.signal(name=SIGNAL_RESUME_TASK)
    def resume_task(self, arg: TaskIdArg) -> None:
        if self.legacy is not None:
            return self.legacy.resume_task(LegacyTaskId(task_id=arg.task_id))
        self._set_paused(arg.task_id, False)

    def _set_paused(self, task_id: int, paused: bool) -> None:
        self.state.set_paused(task_id, paused, workflow.now())
        self.paused_writes.append(SetPausedInput(bot_id=self.state.bot_id, task_id=task_id, paused=paused))
        self.wake = True

    @workflow.signal(name=SIGNAL_TASK_PROGRESS)
    def task_progress(self, progress: TaskProgress) -> None:
        if self.legacy is not None:
            return self.legacy.task_progress(LegacyProgress.model_validate(progress.model_dump()))
        run = self.state.runs.get(progress.task_id)
        if run is None or run.execution_key() != progress.execution_key:
            return  # a late report from an attempt that is over
        self.state.on_progress(run, progress.state, progress.error)

    @workflow.query(name=QUERY_STATUS)
    def status(self) -> SchedulerStatus:
        if self.legacy is not None:
            return SchedulerStatus.model_validate(self.legacy.status().model_dump())
        return self.state.status(workflow.now())

    @workflow.query(name=QUERY_STATUS_BRIEF)
    def status_brief(self) -> SchedulerStatus:
        brief = self.status()
        brief.recentEvents = []
        return brief

    # ---------------------------------------------------------------------------- updates

    @workflow.update(name=UPDATE_START)
    async def start_update(self) -> ControlAnswer:
        """`start`, answered once the definitions are loaded (a status read right after agrees)."""
        if self.legacy is not None:
            was_running = self.legacy.status().isRunning
            self.legacy.start()
            return ControlAnswer(changed=not was_running, isRunning=True)
        changed = self.state.start(workflow.now())
        if changed:
            self.wake = True
        state = self.state
        await workflow.wait_condition(
            lambda: not state.running or (state.plan is not None and not state.reload_requested)
        )
        return ControlAnswer(changed=changed, isRunning=state.running, tasks=len(state.tasks))

    @workflow.update(name=UPDATE_STOP)
    def stop_update(self) -> ControlAnswer:
        if self.legacy is not None:
            was_running = self.legacy.status().isRunning
            self.legacy.stop()
            return ControlAnswer(changed=was_running, isRunning=False)
        was_running = self.state.running
        self.stop()
        return ControlAnswer(changed=was_running, isRunning=False, tasks=len(self.state.tasks))
