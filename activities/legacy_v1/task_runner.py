"""The pre-v2 task runner (`run_bot_task`), frozen: only runs that began before scheduler core v2
start it, until they continue as new. The current runner is `activities.task_runner`.

Original description: one Temporal attempt = one `bot_task_executions` row.

It waits for the exact due instant (the workflow wakes a little early), takes the locks the task
needs, checks rate-limit headroom, runs the handler with a timeout while heartbeating (so `stop`
can cancel it), and does all the run's bookkeeping itself (execution row, definition counters,
deactivation), so a run costs the workflow a single activity.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.handlers.base import TaskContext, TaskHandler
from activities.legacy_v1.scheduler import clip, count_final_failure
from workflows.legacy_v1 import policy
from workflows.legacy_v1.models import (
    ACTIVITY_RUN_TASK,
    SIGNAL_TASK_PROGRESS,
    TaskFailure,
    TaskProgress,
    TaskRunRequest,
    TaskRunResult,
)
from xbot.errors import NonRetryableTaskError, RateLimitedError
from xbot.settings import Settings
from xbot.storage import advisory_locks
from xbot.storage import legacy_v1 as frozen
from xbot.storage.advisory_locks import BOT_LOCK_NAMESPACE, KEY_LOCK_NAMESPACE
from xbot.x.rate_limits import headroom

log = logging.getLogger(__name__)

# A rate-limit window ending this soon is waited out here instead of going back to the workflow.
WAIT_OUT_RESET = timedelta(seconds=3)


class LogicalClock:
    """The time to compare with the workflow's due times.

    The wall clock, except that it never lags the server's clock at the attempt's start (plus
    what has elapsed since): under the time-skipping test server the workflow's clock runs far
    ahead of the wall clock, and due times come from the workflow.
    """

    def __init__(self, server_time: datetime) -> None:
        self.server_time = server_time
        self.started = time.monotonic()

    def now(self) -> datetime:
        elapsed = timedelta(seconds=time.monotonic() - self.started)
        return max(datetime.now(UTC), self.server_time + elapsed)


class LegacyTaskRunner:
    def __init__(
        self, pool: asyncpg.Pool, settings: Settings, handlers: Mapping[str, TaskHandler], identity: str
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.handlers = handlers
        self.identity = identity

    @activity.defn(name=ACTIVITY_RUN_TASK)
    async def run_bot_task(self, request: TaskRunRequest) -> TaskRunResult:
        info = activity.info()
        beat = asyncio.create_task(_heartbeat(info.heartbeat_timeout))
        try:
            return await _Attempt(self, request).run()
        finally:
            beat.cancel()


async def _heartbeat(timeout: timedelta | None) -> None:
    period = max((timeout or timedelta(seconds=30)).total_seconds() / 3, 0.2)
    while True:
        activity.heartbeat()
        await asyncio.sleep(period)


class _Attempt:
    """One attempt of one task, with what it learns along the way."""

    def __init__(self, runner: LegacyTaskRunner, request: TaskRunRequest) -> None:
        self.runner = runner
        self.pool = runner.pool
        self.request = request
        self.info = activity.info()
        self.clock = LogicalClock(self.info.started_time)
        self.attempt = self.info.attempt
        self.key_prefix = f"{self.info.workflow_id}/{self.info.workflow_run_id}/{self.info.activity_id}/"
        self.max_attempts = request.max_attempts
        self.execution_id: int | None = None
        self.started_monotonic = 0.0

    @property
    def last_attempt(self) -> bool:
        return 0 < self.max_attempts <= self.attempt

    async def run(self) -> TaskRunResult:
        request = self.request
        config = await frozen.active_config(self.pool, request.bot_id, request.task_id)
        if config is None:
            return self._result("gone", reason="definition deleted or deactivated")
        if self.attempt > 1:
            await self._close_earlier_attempts()
            await self._report("running")
        delay = (request.fire_at - self.clock.now()).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)
        async with self._locks():
            postponed = await self._rate_limit_gate()
            if postponed is not None:
                return postponed
            handler = self.runner.handlers.get(request.task_type)
            await self._insert_row()
            if handler is None:
                message = f"no handler registered for task type {request.task_type!r}"
                await self._fail(message, policy.UNKNOWN_TASK_TYPE, final=True)
            return await self._run_handler(handler, config)

    async def _run_handler(self, handler: TaskHandler, config: dict[str, Any]) -> TaskRunResult:
        request = self.request
        assert self.execution_id is not None
        context = TaskContext(
            bot_id=request.bot_id,
            task_id=request.task_id,
            task_type=request.task_type,
            config=config,
            due_at=request.fire_at,
            attempt=self.attempt,
            execution_id=self.execution_id,
            extra={"rate_limit_endpoint": request.rate_limit_endpoint, "plan_tier": request.plan_tier},
        )
        try:
            result_data = await asyncio.wait_for(handler.run(context), timeout=request.timeout_seconds)
        except RateLimitedError as error:
            await self._finish("skipped", f"rate limited, postponed until the window resets: {error}")
            return self._result("postponed", postponed_until=error.reset_at, reason=str(error))
        except NonRetryableTaskError as error:
            await self._fail(f"{type(error).__name__}: {error}", policy.NON_RETRYABLE_TASK_ERROR, final=True)
        except asyncio.CancelledError:
            await self._record_cancellation()
            raise
        except TimeoutError:
            await self._fail(f"timed out after {request.timeout_seconds} s", "TaskTimeout", self.last_attempt)
        except Exception as error:
            await self._fail(f"{type(error).__name__}: {error}", "TaskError", self.last_attempt)
        finished = self.clock.now()
        await frozen.complete_attempt(
            self.pool,
            self.execution_id,
            request.task_id,
            finished,
            self._duration_ms(),
            result_data or {},
            request.next_planned_run_at,
        )
        return self._result("completed", last_success_at=finished, finished_at=finished)

    # --------------------------------------------------------------------------- outcomes

    def _result(self, outcome: str, **fields: Any) -> TaskRunResult:
        fields.setdefault("finished_at", self.clock.now())
        return TaskRunResult(outcome=outcome, execution_id=self.execution_id, attempt=self.attempt, **fields)

    def _duration_ms(self) -> int:
        return max(0, int((time.monotonic() - self.started_monotonic) * 1000))

    async def _finish(self, status: str, error: str | None) -> None:
        await frozen.finish_attempt(
            self.pool,
            self.execution_id,
            status,
            self.clock.now(),
            self._duration_ms(),
            clip(error) if error else None,
        )

    async def _fail(self, error: str, error_type: str, final: bool) -> NoReturn:
        """Record the failed attempt and end it with an ApplicationError carrying the details."""
        non_retryable = error_type in policy.NON_RETRYABLE_ERROR_TYPES
        final = final or non_retryable
        await self._finish("failed" if final else "retrying", error)
        failure = TaskFailure(
            execution_id=self.execution_id, attempt=self.attempt, final=final, error=clip(error, 500)
        )
        if final:
            async with self.pool.acquire() as db:
                counted = await count_final_failure(
                    db,
                    self.request.bot_id,
                    self.request.task_id,
                    self.request.next_planned_run_at,
                    self.execution_id,
                    error,
                )
            failure.consecutive_failures = counted.consecutive_failures
            failure.deactivated = counted.deactivated
            failure.log_id = counted.log_id
        else:
            await self._report("retrying", error=clip(error, 300))
        raise ApplicationError(
            clip(error, 500), failure.model_dump(mode="json"), type=error_type, non_retryable=non_retryable
        )

    async def _record_cancellation(self) -> None:
        details = activity.cancellation_details()
        if details is not None and (details.worker_shutdown or details.timed_out):
            cause = "the worker shut down" if details.worker_shutdown else "the attempt timed out"
            status = "failed" if self.last_attempt else "retrying"
            await self._finish(status, f"interrupted: {cause}")
        else:
            await self._finish("cancelled", "cancelled: the scheduler was stopped or the task removed")

    # ---------------------------------------------------------------------- preparations

    async def _close_earlier_attempts(self) -> None:
        """Earlier attempts of this activity can no longer run: Temporal started this one."""
        closed = await frozen.close_earlier_attempts(
            self.pool,
            self.key_prefix,
            self.attempt,
            f"worker lost during this attempt; attempt {self.attempt} replaced it",
        )
        log.debug("closed earlier attempts: %s", closed)

    async def _rate_limit_gate(self) -> TaskRunResult | None:
        """Postpone (not fail) a task whose endpoint has less headroom than it needs."""
        request = self.request
        if not request.rate_limit_endpoint or request.min_rate_limit_remaining <= 0:
            return None
        while True:
            room = await headroom(
                self.pool,
                request.bot_id,
                request.rate_limit_endpoint,
                request.plan_tier,
                now=self.clock.now(),
            )
            if room.allows(request.min_rate_limit_remaining):
                return None
            if room.reset_at is None:
                message = (
                    f"min_rate_limit_remaining {request.min_rate_limit_remaining} exceeds the "
                    f"{request.plan_tier} plan's limit of {room.limit} for {room.endpoint}"
                )
                await self._insert_row()
                await self._fail(message, policy.NON_RETRYABLE_TASK_ERROR, final=True)
            wait = room.reset_at - self.clock.now()
            if wait <= WAIT_OUT_RESET:
                await asyncio.sleep(max(wait.total_seconds(), 0) + 0.01)
                continue
            reason = (
                f"{room.endpoint}: {room.remaining} request(s) left, task needs "
                f"{request.min_rate_limit_remaining}; postponed until {room.reset_at.isoformat()}"
            )
            await self._insert_row(status="skipped", error=reason, remaining=room.remaining)
            return self._result("postponed", postponed_until=room.reset_at, reason=reason)

    async def _insert_row(
        self, status: str = "started", error: str | None = None, remaining: int | None = None
    ) -> None:
        self.started_monotonic = time.monotonic()
        now = self.clock.now()
        self.execution_id = await frozen.upsert_attempt(
            self.pool,
            bot_id=self.request.bot_id,
            task_id=self.request.task_id,
            task_type=self.request.task_type,
            status=status,
            due_at=self.request.fire_at,
            started_at=now,
            attempt=self.attempt,
            worker_id=self.runner.identity,
            execution_key=f"{self.key_prefix}{self.attempt}",
            rate_limit_remaining=remaining,
            error=error,
        )

    @asynccontextmanager
    async def _locks(self) -> AsyncIterator[None]:
        """Hold the bot lock (exclusive tasks during retries) and the task's lock key, if any."""
        request = self.request
        wanted: list[tuple[int, str, str]] = []
        if not request.allow_overlap and (request.bot_lock or self.attempt > 1):
            wanted.append((BOT_LOCK_NAMESPACE, request.bot_id, "the bot's running task"))
        if request.lock_key:
            wanted.append((KEY_LOCK_NAMESPACE, request.lock_key, f"lock key {request.lock_key!r}"))
        if not wanted:
            yield
            return
        async with self.pool.acquire() as connection:
            try:
                for namespace, name, label in wanted:
                    if not await advisory_locks.try_lock(connection, namespace, name):
                        await self._report("waiting_lock", error=f"waiting for {label}")
                        await advisory_locks.lock(connection, namespace, name)
                        await self._report("running")
            except BaseException:
                # A lock request interrupted mid-wait leaves the session unknown: end it, locks go too.
                connection.terminate()
                raise
            try:
                yield
            finally:
                try:
                    await advisory_locks.unlock_all(connection)
                except Exception:
                    connection.terminate()

    async def _report(self, state: str, error: str | None = None) -> None:
        """Tell the workflow (best effort) that this attempt waits for a lock, runs, or backs off."""
        progress = TaskProgress(
            task_id=self.request.task_id,
            activity_id=self.info.activity_id,
            attempt=self.attempt,
            state=state,
            error=error,
        )
        try:
            handle = activity.client().get_workflow_handle(
                self.info.workflow_id or "", run_id=self.info.workflow_run_id
            )
            await handle.signal(SIGNAL_TASK_PROGRESS, progress)
        except Exception as error_:
            log.warning("could not report %s to workflow %s: %s", state, self.info.workflow_id, error_)
