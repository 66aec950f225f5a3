"""The activity that runs one attempt of one task: one attempt = one `bot_task_executions` row.

Temporal never retries it (the workflow owns retries). In order: load the definition and write
the attempt's row in one statement (inside the workflow's early-wake window, before the due
instant), take the task's `lock_key` (visible as `waiting_lock`, bounded by the task's timeout),
check rate-limit headroom, let the handler `prepare` (its checks), wait for the exact instant, run
the handler with its timeout, and record the outcome. A stop or a removed definition cancels it on its next heartbeat.

Heartbeats are tied to progress: each phase has a deadline and the heartbeat stops once it
passes, so an attempt stuck anywhere (a blocked event loop, a query that never returns) times out
and the workflow starts it again instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.bookkeeping import clip, count_final_failure
from activities.handlers.base import TaskContext, TaskHandler
from workflows import policy
from workflows.models import (
    ACTIVITY_RUN_ATTEMPT,
    SIGNAL_TASK_PROGRESS,
    AttemptOutcome,
    AttemptRequest,
    AttemptResult,
    TaskProgress,
)
from xbot.errors import NonRetryableTaskError, RateLimitedError
from xbot.settings import Settings
from xbot.storage import advisory_locks
from xbot.storage import executions as executions_table
from xbot.storage.advisory_locks import KEY_LOCK_NAMESPACE
from xbot.x.rate_limits import headroom

log = logging.getLogger(__name__)

# A rate-limit window ending this soon is waited out here instead of going back to the workflow.
WAIT_OUT_RESET = timedelta(seconds=3)
# Bookkeeping phases (database writes) must finish within this, or the heartbeat stops.
BOOKKEEPING_DEADLINE = timedelta(seconds=45)


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


class Watchdog:
    """Heartbeats while the current phase is within its deadline, and not after."""

    def __init__(self, timeout: timedelta | None) -> None:
        self.period = max((timeout or timedelta(seconds=30)).total_seconds() / 3, 0.2)
        self.deadline = time.monotonic() + BOOKKEEPING_DEADLINE.total_seconds()

    def phase(self, allowed: timedelta) -> None:
        self.deadline = time.monotonic() + max(allowed, timedelta(0)).total_seconds()

    async def beat(self) -> None:
        # The first beat comes after one period, not at the start: an attempt that ends sooner
        # (most do) costs the server no heartbeat call at all, and a dead worker is noticed just
        # as soon, because the heartbeat timeout runs from the attempt's start.
        beats = 0
        while True:
            await asyncio.sleep(self.period)
            if time.monotonic() <= self.deadline:
                beats += 1
                activity.heartbeat(beats)  # the count shows in the Web UI's pending activity


class TaskRunner:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        handlers: Mapping[str, TaskHandler],
        identity: str,
        lock_pool: asyncpg.Pool | None = None,
    ) -> None:
        self.pool = pool
        # Connections that hold a lock_key come from their own pool (one per concurrent attempt
        # at most), so lock holders can never starve the handlers' queries of connections.
        self.lock_pool = lock_pool or pool
        self.settings = settings
        self.handlers = handlers
        self.identity = identity

    @activity.defn(name=ACTIVITY_RUN_ATTEMPT)
    async def run_task_attempt(self, request: AttemptRequest) -> AttemptResult:
        watchdog = Watchdog(activity.info().heartbeat_timeout)
        beat = asyncio.create_task(watchdog.beat())
        try:
            return await _Attempt(self, request, watchdog).run()
        finally:
            beat.cancel()


class _Attempt:
    """One attempt of one task, with what it learns along the way."""

    def __init__(self, runner: TaskRunner, request: AttemptRequest, watchdog: Watchdog) -> None:
        self.runner = runner
        self.pool = runner.pool
        self.request = request
        self.watchdog = watchdog
        self.info = activity.info()
        self.clock = LogicalClock(self.info.started_time)
        self.execution_id: int | None = None
        self.started_monotonic = time.monotonic()

    async def run(self) -> AttemptResult:
        try:
            return await self._run()
        except asyncio.CancelledError:
            details = activity.cancellation_details()
            if details is not None and details.worker_shutdown:
                # Not the task's fault: the workflow starts it again at once elsewhere.
                await asyncio.shield(self._close("lost", "interrupted: the worker shut down"))
                raise ApplicationError(
                    "the worker shut down during the attempt", type=policy.ATTEMPT_LOST, non_retryable=True
                ) from None
            # Stopped or removed: the workflow closes the row with the reason it knows.
            raise

    async def _run(self) -> AttemptResult:
        request = self.request
        config = await self._open_row()
        if config is None:
            await self._close("cancelled", "cancelled: the task definition was deleted or deactivated")
            return self._result("gone", reason="definition deleted or deactivated")
        handler = self.runner.handlers.get(request.task_type)
        if handler is None:
            message = f"no handler registered for task type {request.task_type!r}"
            await self._fail(message, policy.UNKNOWN_TASK_TYPE, final=True)
        # The lock, the headroom check and the handler's own checks run inside the workflow's
        # early-wake window, before the due instant: at the instant only the handler's work is left.
        async with self._lock():
            self.watchdog.phase(BOOKKEEPING_DEADLINE)
            postponed = await self._rate_limit_gate()
            if postponed is not None:
                return postponed
            return await self._run_handler(handler, config)

    async def _run_handler(self, handler: TaskHandler, config: dict[str, Any]) -> AttemptResult:
        request = self.request
        assert self.execution_id is not None
        context = TaskContext(
            bot_id=request.bot_id,
            task_id=request.task_id,
            task_type=request.task_type,
            config=config,
            due_at=request.due_at,
            attempt=request.attempt,
            execution_id=self.execution_id,
            extra={"rate_limit_endpoint": request.rate_limit_endpoint, "plan_tier": request.plan_tier},
        )
        try:
            result_data = await self._at_instant(handler, context)
        except RateLimitedError as error:
            self.watchdog.phase(BOOKKEEPING_DEADLINE)
            await self._close("skipped", f"rate limited, postponed until the window resets: {error}")
            return self._result("postponed", postponed_until=error.reset_at, reason=str(error))
        except NonRetryableTaskError as error:
            await self._fail(f"{type(error).__name__}: {error}", policy.NON_RETRYABLE_TASK_ERROR, final=True)
        except TimeoutError:
            await self._fail(f"timed out after {request.timeout_seconds} s", "TaskTimeout", request.final)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            await self._fail(f"{type(error).__name__}: {error}", "TaskError", request.final)
        self.watchdog.phase(BOOKKEEPING_DEADLINE)
        finished = self.clock.now()
        await executions_table.complete_attempt(
            self.pool,
            execution_id=self.execution_id,
            bot_id=request.bot_id,
            task_id=request.task_id,
            finished_at=finished,
            duration_ms=self._duration_ms(),
            result_data=result_data or {},
            next_planned_run_at=request.next_planned_run_at,
            schedule_version=request.schedule_version,
        )
        return self._result("completed", last_success_at=finished, finished_at=finished)

    # --------------------------------------------------------------------------- outcomes

    def _result(self, outcome: AttemptOutcome, **fields: Any) -> AttemptResult:
        fields.setdefault("finished_at", self.clock.now())
        return AttemptResult(outcome=outcome, execution_id=self.execution_id, **fields)

    async def _at_instant(self, handler: TaskHandler, context: TaskContext) -> dict[str, Any]:
        """The handler's `prepare` (if any) now, then its `run` at the due instant, each bounded by
        the task's timeout."""
        timeout = timedelta(seconds=self.request.timeout_seconds)
        prepare: Callable[[TaskContext], Awaitable[None]] | None = getattr(handler, "prepare", None)
        if prepare is not None:
            self.watchdog.phase(timeout + BOOKKEEPING_DEADLINE)
            await asyncio.wait_for(prepare(context), timeout=timeout.total_seconds())
        delay = (self.request.fire_at - self.clock.now()).total_seconds()
        if delay > 0:
            self.watchdog.phase(timedelta(seconds=delay) + BOOKKEEPING_DEADLINE)
            await asyncio.sleep(delay)
        self.watchdog.phase(timeout + BOOKKEEPING_DEADLINE)
        return await asyncio.wait_for(handler.run(context), timeout=timeout.total_seconds())

    def _duration_ms(self) -> int:
        return max(0, int((time.monotonic() - self.started_monotonic) * 1000))

    async def _close(self, status: str, error: str | None) -> None:
        if self.execution_id is None:
            return
        await executions_table.close_attempt(
            self.pool,
            self.execution_id,
            status,
            self.clock.now(),
            self._duration_ms(),
            clip(error) if error else None,
        )

    async def _fail(self, error: str, error_type: str, final: bool) -> NoReturn:
        """Record the failed attempt and end it with an ApplicationError carrying the result."""
        self.watchdog.phase(BOOKKEEPING_DEADLINE)
        final = final or error_type in policy.NON_RETRYABLE_ERROR_TYPES
        await self._close("failed" if final else "retrying", error)
        result = self._result("failed", reason=clip(error, 500), final=final)
        if final:
            request = self.request
            async with self.pool.acquire() as db:
                result = await count_final_failure(
                    db,
                    request.bot_id,
                    request.task_id,
                    request.execution_key,
                    request.next_planned_run_at,
                    request.schedule_version,
                    self.execution_id,
                    error,
                )
        # Never retried by Temporal: the workflow decides, from the result in the details.
        raise ApplicationError(
            clip(error, 500), result.model_dump(mode="json"), type=error_type, non_retryable=True
        )

    # ---------------------------------------------------------------------- preparations

    async def _open_row(self) -> dict[str, Any] | None:
        """The definition's config (None when it has gone) and the attempt's row, in one statement."""
        request = self.request
        self.execution_id, config = await executions_table.open_attempt(
            self.pool,
            bot_id=request.bot_id,
            task_id=request.task_id,
            task_type=request.task_type,
            due_at=request.due_at,
            started_at=max(request.fire_at, self.clock.now()),
            attempt=request.attempt,
            worker_id=self.runner.identity,
            execution_key=request.execution_key,
        )
        return config

    async def _rate_limit_gate(self) -> AttemptResult | None:
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
                await self._fail(message, policy.NON_RETRYABLE_TASK_ERROR, final=True)
            wait = room.reset_at - self.clock.now()
            if wait <= WAIT_OUT_RESET:
                await asyncio.sleep(max(wait.total_seconds(), 0) + 0.01)
                continue
            reason = (
                f"{room.endpoint}: {room.remaining} request(s) left, task needs "
                f"{request.min_rate_limit_remaining}; postponed until {room.reset_at.isoformat()}"
            )
            await executions_table.set_rate_limit_remaining(self.pool, self.execution_id, room.remaining)
            await self._close("skipped", reason)
            return self._result("postponed", postponed_until=room.reset_at, reason=reason)

    @asynccontextmanager
    async def _lock(self) -> AsyncIterator[None]:
        """Hold the task's lock key, if any, on a connection of the lock pool.

        The wait is visible (`waiting_lock` in the row and in status), bounded by the task's own
        timeout through the session's `lock_timeout`, and a wait that runs out fails the attempt
        (which then retries like any failure) with its row saying why.
        """
        key = self.request.lock_key
        if not key:
            yield
            return
        timeout = timedelta(seconds=self.request.timeout_seconds)
        self.watchdog.phase(BOOKKEEPING_DEADLINE)
        async with self.runner.lock_pool.acquire(timeout=BOOKKEEPING_DEADLINE.total_seconds()) as connection:
            try:
                if not await advisory_locks.try_lock(connection, KEY_LOCK_NAMESPACE, key):
                    await self._wait_for_lock(connection, key, timeout)
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

    async def _wait_for_lock(self, connection: asyncpg.Connection, key: str, timeout: timedelta) -> None:
        reason = f"waiting for lock key {key!r}"
        await executions_table.mark_waiting_lock(self.pool, self.execution_id, reason)
        await self._report("waiting_lock", reason)
        self.watchdog.phase(timeout + BOOKKEEPING_DEADLINE)
        if not await advisory_locks.lock_within(connection, KEY_LOCK_NAMESPACE, key, timeout):
            await self._fail(
                f"lock key {key!r} not acquired within the task's timeout of {self.request.timeout_seconds} s",
                "LockTimeout",
                self.request.final,
            )
        self.watchdog.phase(BOOKKEEPING_DEADLINE)
        await executions_table.mark_started_after_lock(self.pool, self.execution_id, self.clock.now())
        await self._report("running")

    async def _report(self, state: str, error: str | None = None) -> None:
        """Tell the workflow (best effort) that this attempt waits for a lock, or runs again."""
        progress = TaskProgress(
            task_id=self.request.task_id,
            execution_key=self.request.execution_key,
            activity_id=self.info.activity_id,
            attempt=self.request.attempt,
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
