"""Model-based test of the BotScheduler: random operator sequences against the real stack.

A Hypothesis `RuleBasedStateMachine` creates, patches, deletes, deactivates, pauses and runs task
definitions, stops and starts the bot, scripts the handler's next call (fail, fatal, hang),
skips time and SIGKILLs the worker process in the middle of an attempt. Everything is real: the
time-skipping test server, PostgreSQL, `build_worker` with the real activities, the
`xbot.task_definitions` repository the API uses. After every step it checks:

- no workflow task failed, in any run of the bot's chain (continue-as-new included), but for
  the server's UNHANDLED_COMMAND (a signal came in while the task continued as new);
- the `status` query's tasks are the bot's active stored definitions, and its running flag is
  the one the operator set;
- no two executions of tasks without `allow_overlap` overlap, and no lock key is held twice;
- no handler starts once the status says the bot is stopped, nor for a definition it no longer
  shows (deleted or deactivated), beyond the time a running attempt takes to hear of it;
- the attempt rows of each run are numbered 1..n and all but the last are `retrying` or `lost`.

At the end (the bot stopped and idle): no row is left open (`started`, `waiting_lock`, or a
`retrying` that no later attempt followed), closed rows say why, and every history replays.

The attempts run in a worker subprocess (this module run with `-m`: `build_worker`'s activities
and options, without the workflow), so that "kill the worker" is a real SIGKILL; the workflow
runs in `build_worker`'s workflow side in the test process, cached and never killed. The
subprocess handler takes its script from the `model_script` table and records each call in
`model_calls` with wall-clock times from one host clock, so the overlap checks are sound even
though workflow time skips: the rows' own times mix the workflow's clock and the wall clock.

The state machine runs in a worker thread; its coroutines run on an event loop of their own in
another thread, which keeps running between steps (clients, pool, workflow worker and subprocess
pipes live there). Each example has its own test server, bot and workers; the database is the
test's.

Limits of the Java time-skipping test server shape the test:
- A workflow cached by a killed worker stays bound to its sticky queue for good (no sticky
  schedule-to-start timeout), hence the workflow worker that is never killed.
- A worker without a workflow cache (every task replays the whole history) gets update tasks
  whose replay disagrees with the history: `start_scheduler` after a reload while stopped fails
  with "[TMPRL1100] Nondeterminism error: Activity machine does not handle this event:
  TimerStarted" (not on the dev server), hence no workflows in the killed worker.
- It never times out an activity whose cancellation was requested, so after a kill the test
  waits until the server has timed out the dead worker's attempts and the workflow saw it.
- It refuses, then wedges on, a workflow task that cancels an activity or a timer that ended
  while the task ran (a real server accepts both): an example that hits this is dropped with a
  note, not failed (see `_test_server_wedge`); any other refusal fails.

    XBOT_MODEL_EXAMPLES=200 XBOT_MODEL_STEPS=40 pytest tests/scheduler/test_model.py
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, Phase, reject, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from temporalio.api.enums.v1 import EventType, PendingWorkflowTaskState, WorkflowTaskFailedCause
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import LogForwardingConfig, LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from activities.handlers.base import TaskContext
from launch.worker import build_worker, pool_sizes
from tests.scheduler.helpers import (
    TEST_OPTIONS,
    ScriptedHandler,
    advance,
    executions,
    handlers_with,
    insert_bot,
    start_bot,
    status,
    terminate_started,
)
from tests.support.waiting import eventually
from workflows.bot_scheduler import BotScheduler
from workflows.models import (
    SIGNAL_PAUSE_TASK,
    SIGNAL_RELOAD_TASKS,
    SIGNAL_RESUME_TASK,
    SIGNAL_RUN_TASK,
    SIGNAL_START,
    SIGNAL_STOP,
    UPDATE_START,
    UPDATE_STOP,
    ControlAnswer,
    SchedulerStatus,
    TaskIdArg,
)
from xbot.settings import load_settings
from xbot.storage.pool import create_pool
from xbot.task_definitions import (
    TaskDefinitionConflict,
    TaskDefinitionCreate,
    TaskDefinitionError,
    TaskDefinitionPatch,
    create_task_definition,
    delete_task_definition,
    get_task_definition,
    set_paused,
    update_task_definition,
)

T = TypeVar("T")

# A worker subprocess SIGKILLed mid-attempt: a system test.
pytestmark = pytest.mark.system

EXAMPLES = int(os.environ.get("XBOT_MODEL_EXAMPLES", "3"))
STEPS = int(os.environ.get("XBOT_MODEL_STEPS", "12"))
# Shrinking re-runs the real stack many times: on for a local hunt, off by default (CI).
SHRINK = os.environ.get("XBOT_MODEL_SHRINK", "") == "1"
VERBOSE = os.environ.get("XBOT_MODEL_VERBOSE", "") == "1"

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Registered in the validated registry, so definitions go through `create_task_definition`; the
# model worker registers its scripted handler under this type instead of the real one.
TASK_TYPE = "noop"
LOCK_KEYS = ("alpha", "beta")
MAX_DEFINITIONS = 6
# A hung call sleeps this long in real time (the test server does not skip time meanwhile).
HANG_SECONDS = 3.0
STEP_TIMEOUT = 420.0
SETTLE_TIMEOUT = 90.0
# An attempt already under way when the workflow stops it learns so on its next heartbeat (the
# heartbeat timeout is 5 s): its handler may still start within this long.
CANCEL_GRACE = timedelta(seconds=10)
# How a worker logs a completion the server refused, and the test server's known races.
REFUSED_COMPLETION = "Error while completing workflow activation"
KNOWN_SERVER_RACES = ("ACTIVITY_UNKNOWN for scheduledEventId", "invalid history builder state for action")
# Logged by every worker on the test server; says nothing.
NOISE = "activity_failure_include_heartbeat"

# The workflows run in this process (see `_setup`): its Temporal core logs go to this logger, so a
# refused workflow task completion is seen here as it is in the subprocess worker's output.
CORE_LOGGER = logging.getLogger("xbot.tests.model.core")
_core_runtime: Runtime | None = None


def core_runtime() -> Runtime:
    """One runtime for the in-process workflow workers, forwarding core warnings to CORE_LOGGER."""
    global _core_runtime
    if _core_runtime is None:
        logging_config = LoggingConfig(
            filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
            forwarding=LogForwardingConfig(logger=CORE_LOGGER),
        )
        _core_runtime = Runtime(telemetry=TelemetryConfig(logging=logging_config))
    return _core_runtime


class RefusalRecorder(logging.Handler):
    """Keeps the in-process core's refused workflow task completions (see `_test_server_wedge`)."""

    def __init__(self, refusals: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.refusals = refusals

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        if REFUSED_COMPLETION in line:
            self.refusals.append(f"[in-process workflow worker] {line}")


OPEN_STATUSES = ("started", "waiting_lock")
NOT_LAST_STATUSES = ("retrying", "lost")
FAR_FUTURE = datetime.max.replace(tzinfo=UTC)

MODEL_TABLES = """
CREATE TABLE IF NOT EXISTS model_script (
    id bigserial PRIMARY KEY, task_id bigint NOT NULL, action text NOT NULL
);
CREATE TABLE IF NOT EXISTS model_calls (
    id bigserial PRIMARY KEY, bot_id text NOT NULL, task_id bigint NOT NULL, execution_id bigint,
    attempt int, action text NOT NULL, pid int NOT NULL,
    started_at timestamptz NOT NULL, ended_at timestamptz
);
"""


# ------------------------------------------------------------------------- the model worker


@dataclass
class DbScriptedHandler(ScriptedHandler):
    """A `ScriptedHandler` whose script is the `model_script` table and whose calls are recorded
    in `model_calls`, so the test process can script and watch a worker in another process.

    A call's interval is taken from the wall clock at its entry and before its exit, so it holds
    the handler's real execution, whichever process ran it.
    """

    pool: asyncpg.Pool | None = None

    async def run(self, ctx: TaskContext) -> dict[str, Any]:
        started = datetime.now(UTC)
        assert self.pool is not None
        action = await self.pool.fetchval(
            """
            DELETE FROM model_script WHERE id = (
                SELECT id FROM model_script WHERE task_id = $1 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
            ) RETURNING action
            """,
            ctx.task_id,
        )
        action = action or self.default
        call_id = await self.pool.fetchval(
            """
            INSERT INTO model_calls (bot_id, task_id, execution_id, attempt, action, pid, started_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id
            """,
            ctx.bot_id,
            ctx.task_id,
            ctx.execution_id,
            ctx.attempt,
            action,
            os.getpid(),
            started,
        )
        try:
            return await self._act(action, ctx)
        finally:
            ended = datetime.now(UTC)
            await asyncio.shield(
                self.pool.execute("UPDATE model_calls SET ended_at = $2 WHERE id = $1", call_id, ended)
            )


async def worker_main(address: str, task_queue: str, database_url: str) -> None:
    """The model's worker process: the real worker's activities (`build_worker`'s own list and
    options), with the scripted handler for TASK_TYPE, and no workflows.

    The workflows run in the test process, in a worker that is never killed: on the Java test
    server a workflow that was cached by a killed worker stays bound to its sticky queue for
    good, and a worker without a cache, which replays the whole history for every task, makes
    the test server's update tasks go wrong (see the module's docstring).
    """
    from launch import worker as worker_app

    real_worker = worker_app.Worker

    def activities_only(*args: Any, workflows: Any, **options: Any) -> Worker:
        return real_worker(*args, **options)

    worker_app.Worker = activities_only  # type: ignore[assignment,misc]
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    main_size, lock_size = pool_sizes(8)
    pool = await create_pool(database_url, max_size=main_size)
    lock_pool = await create_pool(database_url, max_size=lock_size)
    handler = DbScriptedHandler(pool=pool, sleep_seconds=HANG_SECONDS)
    async with httpx.AsyncClient() as http:
        worker = build_worker(
            client,
            pool,
            load_settings(),
            task_queue,
            http,
            handlers=handlers_with(handler, TASK_TYPE),
            lock_pool=lock_pool,
            max_concurrent_activities=8,
        )
        async with worker:
            print("ready", flush=True)
            await asyncio.Event().wait()


# ----------------------------------------------------------------------- the test's event loop


class Shared:
    """An event loop running in a thread of its own, with the test database's pool."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        binary = shutil.which("temporal-test-server")
        assert binary is not None, "temporal-test-server not on PATH; install the dev extra"
        self.server_binary = binary
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="model-loop", daemon=True)
        self.thread.start()
        self.pool: asyncpg.Pool = self.run(self._open())
        self.started = time.monotonic()

    async def _open(self) -> asyncpg.Pool:
        pool = await create_pool(self.database_url, max_size=5)
        await pool.execute(MODEL_TABLES)
        return pool

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = STEP_TIMEOUT) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise AssertionError(f"a step did not finish within {timeout} s") from None

    def log(self, message: str) -> None:
        if VERBOSE:
            print(f"[{time.monotonic() - self.started:7.1f}s] {message}", flush=True)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.pool.close(), 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


# ---------------------------------------------------------------------------- the state machine


class ServerLost(Exception):
    """The time-skipping test server dropped the connection of a skip: the example is dropped."""


@dataclass(frozen=True)
class Spec:
    """A definition to create (with its dependency, drawn apart)."""

    interval_minutes: int
    max_retries: int
    allow_overlap: bool
    lock_key: str | None
    # next_planned_run_at this long after now; None: the scheduler's lead (a minute).
    first_in_seconds: int | None
    priority: int


SPECS = st.builds(
    Spec,
    interval_minutes=st.integers(1, 10),
    max_retries=st.integers(0, 2),
    allow_overlap=st.booleans(),
    lock_key=st.sampled_from([None, *LOCK_KEYS]),
    first_in_seconds=st.none() | st.integers(0, 600),
    priority=st.integers(0, 2),
)


@dataclass
class Definition:
    id: int
    allow_overlap: bool
    lock_key: str | None
    # Since when (wall clock) the workflow's status has left out this deleted or inactive
    # definition; None while it is active, or may be again (a reactivation on its way).
    gone_since: datetime | None = None


@dataclass(frozen=True)
class Interval:
    task_id: int
    execution_id: int | None
    started_at: datetime
    ended_at: datetime

    def describe(self) -> str:
        end = "running" if self.ended_at == FAR_FUTURE else self.ended_at.isoformat()
        return f"task {self.task_id} (execution {self.execution_id}) {self.started_at.isoformat()} .. {end}"


def first_overlap(intervals: Sequence[Interval]) -> tuple[Interval, Interval] | None:
    """Two of the intervals that overlap, or None."""
    latest: Interval | None = None
    for interval in sorted(intervals, key=lambda i: i.started_at):
        if latest is not None and interval.started_at < latest.ended_at:
            return latest, interval
        if latest is None or interval.ended_at > latest.ended_at:
            latest = interval
    return None


def _activity_close(event: HistoryEvent) -> Any:
    """The attributes of an event that closes an activity (they name its scheduled event)."""
    closing = {
        EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "activity_task_completed_event_attributes",
        EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity_task_failed_event_attributes",
        EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "activity_task_timed_out_event_attributes",
        EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "activity_task_canceled_event_attributes",
    }
    name = closing.get(event.event_type)
    return getattr(event, name) if name else None


def workflow_task_failures(history: WorkflowHistory) -> list[str]:
    """The workflow task failures of a history, but UNHANDLED_COMMAND: the server's answer to a
    completion that closes the run (continue-as-new) while new events (a signal) came in; the
    worker runs the task again with them. Not the workflow's fault, and no real server avoids it."""
    failures = []
    for event in history.events:
        if event.event_type != EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            continue
        attributes = event.workflow_task_failed_event_attributes
        if attributes.cause == WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND:
            continue
        cause = WorkflowTaskFailedCause.Name(attributes.cause)
        failures.append(f"event {event.event_id}: {cause}: {attributes.failure.message}")
    return failures


class SchedulerModel(RuleBasedStateMachine):
    """Operator actions on one bot; the invariants hold after every step."""

    tasks = Bundle("tasks")

    def __init__(self, shared: Shared) -> None:
        super().__init__()
        self.shared = shared
        self.pool = shared.pool
        self.definitions: dict[int, Definition] = {}
        self.running = True
        # Since when (wall clock) the workflow's status has said it is stopped, as the operator
        # asked; None while running or starting.
        self.stopped_since: datetime | None = None
        self.failed = False
        self.env: WorkflowEnvironment | None = None
        self.worker: asyncio.subprocess.Process | None = None
        self.handle: WorkflowHandle[Any, Any] | None = None
        self.bot = ""
        self.task_queue = f"tq-model-{uuid.uuid4().hex[:10]}"
        self.first_run_id = ""
        self.status_error: str | None = None
        self.worker_output: deque[str] = deque(maxlen=300)
        self.drains: set[asyncio.Task[None]] = set()
        self.workflow_worker: Worker | None = None
        self.workflow_worker_run: asyncio.Task[None] | None = None
        self.http: httpx.AsyncClient | None = None
        # The test server's refusals of workflow task completions, as the workers logged them.
        self.refusals: list[str] = []
        self.refusal_recorder: RefusalRecorder | None = None
        # Runs of the chain that continued as new: their histories do not change any more.
        self.closed_runs: dict[str, WorkflowHistory] = {}

    # ----------------------------------------------------------------------------- plumbing

    def _run(self, label: str, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run one step's coroutine on the shared loop; remember a failure (teardown then only
        cleans up, so the reported error is the step's)."""
        self.shared.log(label)
        try:
            return self.shared.run(coroutine)
        except ServerLost as error:
            self.failed = True
            print(
                f"model example dropped at {label!r}: the test server stopped answering: {error}", flush=True
            )
            reject()
            raise
        except BaseException:
            self.failed = True
            if self.handle is not None:
                wedge = self.shared.run(self._test_server_wedge(), 60)
                if wedge is not None:
                    # Not the scheduler's doing: drop this example (see `_test_server_wedge`).
                    print(f"model example dropped at {label!r}: {wedge}", flush=True)
                    reject()
                with contextlib.suppress(Exception):
                    print(
                        f"model step {label!r} failed; {self.shared.run(self._diagnosis(), 60)}", flush=True
                    )
            raise

    @property
    def client(self) -> Client:
        assert self.env is not None
        return self.env.client

    @property
    def workflow(self) -> WorkflowHandle[Any, Any]:
        assert self.handle is not None
        return self.handle

    async def _now(self) -> datetime:
        assert self.env is not None
        return await self.env.get_current_time()

    async def _reload(self) -> None:
        await self.workflow.signal(SIGNAL_RELOAD_TASKS)

    async def _exists(self, task_id: int) -> bool:
        return await get_task_definition(self.pool, self.bot, task_id) is not None

    async def _status(self) -> SchedulerStatus | None:
        """The status query, or None while no worker can answer it (e.g. just after a kill)."""
        try:
            return await asyncio.wait_for(status(self.workflow), 20)
        except (TimeoutError, RPCError) as error:
            self.status_error = repr(error)
            return None

    async def _spawn_worker(self) -> asyncio.subprocess.Process:
        """Start a model worker and wait until it polls; its output (stdout and stderr) is drained
        into `worker_output`, so a full pipe never blocks it and a failure can show its logs."""
        address = self.client.service_client.config.target_host
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.scheduler.test_model",
            address,
            self.task_queue,
            self.shared.database_url,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert worker.stdout is not None
        ready = asyncio.get_running_loop().create_future()
        self.drains.add(asyncio.create_task(self._drain(worker, ready)))
        try:
            await asyncio.wait_for(asyncio.shield(ready), 120)
        except TimeoutError:
            worker.kill()
            await worker.wait()
            raise AssertionError(
                f"the model worker did not start: {list(self.worker_output)[-20:]}"
            ) from None
        return worker

    async def _drain(self, worker: asyncio.subprocess.Process, ready: asyncio.Future[None]) -> None:
        assert worker.stdout is not None
        async for raw in worker.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line == "ready" and not ready.done():
                ready.set_result(None)
                continue
            if NOISE in line:
                continue
            self.worker_output.append(f"[{worker.pid}] {line}")
            if REFUSED_COMPLETION in line:
                self.refusals.append(line)

    async def _kill_worker(self) -> None:
        """SIGKILL the worker; its handler calls end now (the process is gone)."""
        worker, self.worker = self.worker, None
        if worker is None:
            return
        if worker.returncode is None:
            worker.send_signal(signal.SIGKILL)
        await worker.wait()
        await self.pool.execute(
            "UPDATE model_calls SET ended_at = $2 WHERE pid = $1 AND ended_at IS NULL",
            worker.pid,
            datetime.now(UTC),
        )

    # ------------------------------------------------------------------------------ set-up

    @initialize(
        target=tasks,
        continue_after_events=st.sampled_from([200, 1000]),
        specs=st.lists(st.tuples(SPECS, st.none() | st.integers(0, MAX_DEFINITIONS)), min_size=1, max_size=4),
    )
    def start_scheduler(self, continue_after_events: int, specs: list[tuple[Spec, int | None]]) -> Any:
        """A bot, its worker and its workflow (continuing as new early, or not), and a few
        definitions to begin with, each maybe depending on one created before it (by index)."""
        self._run(
            f"start (continue_after_events={continue_after_events})", self._setup(continue_after_events)
        )
        created: list[int] = []
        for spec, after in specs:
            dependency = created[after % len(created)] if created and after is not None else None
            task_id = self._run(f"create {spec} after #{dependency}", self._create(spec, dependency))
            assert task_id is not None
            created.append(task_id)
        return multiple(*created)

    async def _setup(self, continue_after_events: int) -> None:
        self.refusal_recorder = RefusalRecorder(self.refusals)
        CORE_LOGGER.addHandler(self.refusal_recorder)
        self.env = await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=self.shared.server_binary,
            data_converter=pydantic_data_converter,
            runtime=core_runtime(),
        )
        self.bot = await insert_bot(self.pool)
        # The workflows run here, in a worker that keeps them cached and is never killed; the
        # attempts run in the subprocess worker the kill rule kills.
        self.http = httpx.AsyncClient()
        self.workflow_worker = build_worker(
            self.client,
            self.pool,
            load_settings(),
            self.task_queue,
            self.http,
            handlers={},
            no_remote_activities=True,
        )
        self.workflow_worker_run = asyncio.create_task(self.workflow_worker.run())
        self.worker = await self._spawn_worker()
        options = TEST_OPTIONS.model_copy(update={"continue_after_events": continue_after_events})
        self.handle = await start_bot(self.client, self.bot, self.task_queue, options)
        assert self.handle.result_run_id is not None
        self.first_run_id = self.handle.result_run_id

    # ---------------------------------------------------------------- definitions (the API)

    @precondition(lambda self: len(self.definitions) < MAX_DEFINITIONS)
    @rule(target=tasks, spec=SPECS, dependency=st.none() | tasks)
    def create(self, spec: Spec, dependency: int | None) -> Any:
        task_id = self._run(f"create {spec} after #{dependency}", self._create(spec, dependency))
        return multiple() if task_id is None else task_id

    async def _create(self, spec: Spec, dependency: int | None) -> int | None:
        planned = None
        if spec.first_in_seconds is not None:
            planned = await self._now() + timedelta(seconds=spec.first_in_seconds)
        fields = TaskDefinitionCreate(
            task_type=TASK_TYPE,
            interval_minutes=spec.interval_minutes,
            max_retries=spec.max_retries,
            allow_overlap=spec.allow_overlap,
            lock_key=spec.lock_key,
            dependencies=[] if dependency is None else [dependency],
            next_planned_run_at=planned,
            priority=spec.priority,
        )
        try:
            created = await create_task_definition(self.pool, self.bot, fields, allow_private_urls=False)
        except TaskDefinitionError:
            return None  # its dependency was deleted: refused, as the API would (422)
        self.definitions[created.id] = Definition(created.id, spec.allow_overlap, spec.lock_key)
        await self._reload()
        return created.id

    async def _patch(self, task_id: int, patch: TaskDefinitionPatch) -> None:
        if await update_task_definition(self.pool, self.bot, task_id, patch, allow_private_urls=False):
            await self._reload()

    @rule(task=tasks, interval=st.none() | st.integers(1, 10), planned_in_seconds=st.integers(0, 900))
    def patch_schedule(self, task: int, interval: int | None, planned_in_seconds: int) -> None:
        """A new interval, or (when `interval` is None) a new next_planned_run_at."""
        self._run(f"patch #{task}", self._patch_schedule(task, interval, planned_in_seconds))

    async def _patch_schedule(self, task: int, interval: int | None, planned_in_seconds: int) -> None:
        if interval is not None:
            patch = TaskDefinitionPatch(interval_minutes=interval)
        else:
            patch = TaskDefinitionPatch(
                next_planned_run_at=await self._now() + timedelta(seconds=planned_in_seconds)
            )
        await self._patch(task, patch)

    @rule(task=tasks)
    def deactivate(self, task: int) -> None:
        self._run(f"deactivate #{task}", self._patch(task, TaskDefinitionPatch(is_active=False)))

    @rule(task=tasks)
    def reactivate(self, task: int) -> None:
        if task in self.definitions:
            self.definitions[task].gone_since = None
        self._run(f"reactivate #{task}", self._patch(task, TaskDefinitionPatch(is_active=True)))

    @rule(task=tasks)
    def delete(self, task: int) -> None:
        """Refused while another definition depends on it (the API answers 409)."""
        self._run(f"delete #{task}", self._delete(task))

    async def _delete(self, task: int) -> None:
        with contextlib.suppress(TaskDefinitionConflict):
            if await delete_task_definition(self.pool, self.bot, task):
                await self._reload()

    @rule(task=tasks, paused=st.booleans())
    def pause_or_resume(self, task: int, paused: bool) -> None:
        self._run(f"{'pause' if paused else 'resume'} #{task}", self._pause(task, paused))

    async def _pause(self, task: int, paused: bool) -> None:
        if await set_paused(self.pool, self.bot, task, paused) is not None:
            name = SIGNAL_PAUSE_TASK if paused else SIGNAL_RESUME_TASK
            await self.workflow.signal(name, TaskIdArg(task_id=task))

    @rule(task=tasks)
    def run_now(self, task: int) -> None:
        self._run(f"run #{task}", self._run_now(task))

    async def _run_now(self, task: int) -> None:
        if await self._exists(task):  # the API answers 404 otherwise
            await self.workflow.signal(SIGNAL_RUN_TASK, TaskIdArg(task_id=task))

    # ------------------------------------------------------------------------- the bot

    @rule(via=st.sampled_from(["signal", "update"]))
    def stop(self, via: str) -> None:
        """The `stop` signal, or the `stop_scheduler` update the API sends (it answers)."""
        was_running, self.running = self.running, False
        self._run(f"stop ({via})", self._control(via, SIGNAL_STOP, UPDATE_STOP, was_running, False))

    @rule(via=st.sampled_from(["signal", "update"]))
    def start(self, via: str) -> None:
        """The `start` signal, or the `start_scheduler` update (answered once the plan loaded)."""
        was_running, self.running = self.running, True
        self.stopped_since = None
        self._run(f"start ({via})", self._control(via, SIGNAL_START, UPDATE_START, was_running, True))

    async def _control(
        self, via: str, signal_name: str, update: str, was_running: bool, wanted: bool
    ) -> None:
        if via == "signal":
            await self.workflow.signal(signal_name)
            return
        stored = await self._active_ids()
        call = self.workflow.execute_update(update, result_type=ControlAnswer)
        try:
            answer = await asyncio.wait_for(call, SETTLE_TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"{update} got no answer; {await self._diagnosis()}") from None
        expected = ControlAnswer(changed=was_running != wanted, isRunning=wanted, tasks=answer.tasks)
        assert answer == expected, f"{update} answered {answer}, expected {expected}"
        if wanted:
            # "Answered once the definitions are loaded (a status read right after agrees)"; unless
            # one was deactivated meanwhile (its error threshold), which nothing here orders.
            shown = await self._status()
            if shown is not None and await self._active_ids() == stored:
                tasks = sorted(t.id for t in shown.tasks)
                assert (tasks, answer.tasks) == (stored, len(stored)), (
                    f"{update} answered {answer} before the definitions loaded: status right after shows "
                    f"tasks {tasks}, the active definitions are {stored}"
                )

    async def _active_ids(self) -> list[int]:
        rows = await self.pool.fetch(
            "SELECT id FROM bot_task_definitions WHERE bot_id = $1 AND is_active ORDER BY id", self.bot
        )
        return [row["id"] for row in rows]

    # --------------------------------------------------------------- the world misbehaves

    @rule(task=tasks, action=st.sampled_from(["fail", "fatal", "sleep"]))
    def script_next_call(self, task: int, action: str) -> None:
        """The task's next handler call fails, fails for good, or hangs for HANG_SECONDS."""
        self._run(
            f"next call of #{task}: {action}",
            self.pool.execute("INSERT INTO model_script (task_id, action) VALUES ($1, $2)", task, action),
        )

    @rule(seconds=st.integers(5, 12 * 60))
    def skip_time(self, seconds: int) -> None:
        self._run(f"advance {seconds} s", self._skip_time(seconds))

    async def _skip_time(self, seconds: int) -> None:
        assert self.env is not None
        try:
            await advance(self.env, timedelta(seconds=seconds))
        except RPCError as error:
            # The connection to the test server itself broke (not a slow skip: that would be
            # DEADLINE_EXCEEDED, and fail).
            if "transport error" in str(error):
                raise ServerLost(str(error)) from error
            raise

    @rule(task=tasks)
    def kill_worker(self, task: int) -> None:
        """SIGKILL the worker while `task` hangs in its handler (if it can run), then start another."""
        self._run(f"kill the worker during #{task}", self._kill_during(task))

    async def _kill_during(self, task: int) -> None:
        if self.running and await self._exists(task):
            await self.pool.execute("INSERT INTO model_script (task_id, action) VALUES ($1, 'sleep')", task)
            await self.workflow.signal(SIGNAL_RUN_TASK, TaskIdArg(task_id=task))
            with contextlib.suppress(AssertionError):  # it may not run now (paused, deps): kill anyway
                await eventually(self._open_calls, bool, timeout=HANG_SECONDS * 2)
        assert self.worker is not None
        doomed = f"{self.worker.pid}@{socket.gethostname()}"  # the client's default identity
        held = set(await self._attempts_held_by(doomed))
        await self._kill_worker()
        self.worker = await self._spawn_worker()
        # Wait until the server has timed out the attempts the dead worker held (the heartbeat
        # timeout) and the workflow has taken that in. The Java test server never times out an
        # activity once its cancellation is requested (TestWorkflowMutableStateImpl.
        # timeoutActivity: "Outdated timer" unless INITIATED or STARTED), and it refuses a
        # cancellation of one that timed out while the workflow task ran: a stop or a delete
        # reaching a dead worker's attempt before then would wedge it. The real server does both.
        deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT
        while True:
            pending = await self._attempts_held_by(doomed)
            held.update(pending)
            if not pending and await self._workflow_saw_end_of(held):
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"attempts {sorted(held)} of the killed worker never ended")
            await asyncio.sleep(0.1)

    async def _attempts_held_by(self, identity: str) -> list[str]:
        description = await self.workflow.describe()
        return [
            activity.activity_id
            for activity in description.raw_description.pending_activities
            if activity.last_worker_identity == identity
        ]

    async def _workflow_saw_end_of(self, activity_ids: set[str]) -> bool:
        """Whether the current run's history closes these activities, then completes a workflow
        task (a run that continued as new had none in flight)."""
        events = (await self.workflow.fetch_history()).events
        scheduled = {
            event.event_id
            for event in events
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and event.activity_task_scheduled_event_attributes.activity_id in activity_ids
        }
        closed = [
            event.event_id
            for event in events
            if (attributes := _activity_close(event)) is not None
            and attributes.scheduled_event_id in scheduled
        ]
        if len(closed) < len(scheduled):
            return False
        last = max(closed, default=0)
        return any(
            event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED and event.event_id > last
            for event in events
        )

    async def _test_server_wedge(self) -> str | None:
        """Whether the Java test server wedged the workflow on one of its known races.

        When a workflow task's completion carries a command for something that ended while the
        task ran, the test server refuses it: RequestCancelActivityTask for an activity that
        completed or timed out meanwhile ("ACTIVITY_UNKNOWN"; a real server records the request
        and does nothing more), or CancelTimer for a timer that fired meanwhile
        (temporalio/sdk-java#2606). It then leaves that task STARTED in the history forever
        (temporalio/sdk-java#3088): a WORKFLOW_TASK_STARTED followed by anything but its
        completion, failure or timeout, which no real server writes. The workflow cannot go on,
        whatever it does. Any other refusal is reported as a failure. The never-closed task is the
        proof; a refusal need not be on record by the time a step gives up (a 40-example run failed
        a `stop` update on such a history instead of dropping the example).
        """
        if not all(any(race in line for race in KNOWN_SERVER_RACES) for line in self.refusals):
            return None
        closing = (
            EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
            EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
            EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
        )
        with contextlib.suppress(Exception):
            for history in await self._histories():
                for started, following in itertools.pairwise(history.events):
                    if (
                        started.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED
                        and following.event_type not in closing
                    ):
                        return (
                            f"test server wedge (temporalio/sdk-java#3088): the workflow task started at "
                            f"event {started.event_id} never closed, then "
                            f"{EventType.Name(following.event_type)}; refused: {self._last_refusal()!r}"
                        )
            # Or the task refused last is the history's end, STARTED for good (a failing step
            # has waited far longer than the workflow task timeout).
            last = (await self.workflow.fetch_history()).events[-1]
            if last.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                return (
                    f"test server wedge (temporalio/sdk-java#3088): the workflow task started at event "
                    f"{last.event_id} never closed; refused: {self._last_refusal()!r}"
                )
        return None

    def _last_refusal(self) -> str:
        return self.refusals[-1] if self.refusals else "nothing on record"

    async def _diagnosis(self) -> str:
        """What the server says about the workflow: pending tasks and the last events."""
        raw = (await self.workflow.describe()).raw_description
        activities = [
            (activity.activity_id, activity.activity_type.name, activity.state, activity.last_worker_identity)
            for activity in raw.pending_activities
        ]
        task = raw.pending_workflow_task
        last = [
            EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
            for event in (await self.workflow.fetch_history()).events[-8:]
        ]
        return (
            f"pending activities: {activities}; pending workflow task: "
            f"{PendingWorkflowTaskState.Name(task.state) if raw.HasField('pending_workflow_task') else None}"
            f"; last events: {last}; last status query error: {self.status_error}"
            f"; worker output: {list(self.worker_output)[-40:]}"
        )

    async def _open_calls(self) -> int:
        count: int = await self.pool.fetchval(
            "SELECT count(*) FROM model_calls WHERE bot_id = $1 AND ended_at IS NULL", self.bot
        )
        return count

    # ------------------------------------------------------------------------ invariants

    @invariant()
    def invariants_hold(self) -> None:
        self._run("check", self._check(final=False))

    async def _check(self, final: bool) -> None:
        await self._check_histories()
        await self._check_status_matches_definitions()
        await self._check_calls()
        await self._check_attempt_rows(final)

    async def _histories(self) -> list[WorkflowHistory]:
        """The history of every run of the bot's chain, first to current."""
        histories: list[WorkflowHistory] = []
        run_id = self.first_run_id
        while True:
            history = self.closed_runs.get(run_id)
            if history is None:
                history = await self.client.get_workflow_handle(self.bot, run_id=run_id).fetch_history()
            histories.append(history)
            last = history.events[-1]
            if last.event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
                return histories
            self.closed_runs[run_id] = history
            run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id

    async def _check_histories(self) -> None:
        for history in await self._histories():
            failures = workflow_task_failures(history)
            assert not failures, f"workflow task failed in run of {history.workflow_id}: {failures}"

    async def _check_status_matches_definitions(self) -> None:
        async def probe() -> tuple[list[int], list[int] | None, bool | None]:
            stored = await self._active_ids()
            current = await self._status()
            if current is None:
                return stored, None, None
            return stored, sorted(t.id for t in current.tasks), current.isRunning

        def agrees(value: tuple[list[int], list[int] | None, bool | None]) -> bool:
            stored, shown, running = value
            return stored == shown and running == self.running

        try:
            stored, _, _ = await eventually(probe, agrees, timeout=SETTLE_TIMEOUT)
        except AssertionError as error:
            raise AssertionError(
                f"status does not show the active definitions (stored, shown, isRunning) with the bot "
                f"{'running' if self.running else 'stopped'}: {error}; {await self._diagnosis()}"
            ) from None
        # The workflow has taken in the stop, and forgotten the definitions no longer active.
        now = datetime.now(UTC)
        if not self.running and self.stopped_since is None:
            self.stopped_since = now
        for definition in self.definitions.values():
            if definition.id in stored:
                definition.gone_since = None
            elif definition.gone_since is None:
                definition.gone_since = now

    async def _check_calls(self) -> None:
        """Handler calls: none while stopped or for a definition gone, no overlap, no lock twice."""
        rows = await self.pool.fetch(
            "SELECT task_id, execution_id, started_at, ended_at FROM model_calls WHERE bot_id = $1", self.bot
        )
        calls = [
            Interval(row["task_id"], row["execution_id"], row["started_at"], row["ended_at"] or FAR_FUTURE)
            for row in rows
        ]
        if self.stopped_since is not None:
            late = [call for call in calls if call.started_at > self.stopped_since + CANCEL_GRACE]
            assert not late, (
                f"a handler ran with the bot stopped (since {self.stopped_since.isoformat()}): "
                + "; ".join(call.describe() for call in late)
            )
        for definition in self.definitions.values():
            if definition.gone_since is None:
                continue
            late = [
                call
                for call in calls
                if call.task_id == definition.id and call.started_at > definition.gone_since + CANCEL_GRACE
            ]
            assert not late, (
                f"task {definition.id} ran after it was deleted or deactivated (status without it since "
                f"{definition.gone_since.isoformat()}): " + "; ".join(call.describe() for call in late)
            )
        exclusive = [call for call in calls if not self.definitions[call.task_id].allow_overlap]
        overlap = first_overlap(exclusive)
        assert overlap is None, "executions of tasks without allow_overlap overlap: " + " and ".join(
            call.describe() for call in overlap
        )
        for key in LOCK_KEYS:
            holders = [call for call in calls if self.definitions[call.task_id].lock_key == key]
            overlap = first_overlap(holders)
            assert overlap is None, f"lock key {key!r} held twice at once: " + " and ".join(
                call.describe() for call in overlap
            )

    async def _check_attempt_rows(self, final: bool) -> None:
        runs: dict[str, list[asyncpg.Record]] = defaultdict(list)
        for row in await executions(self.pool, self.bot):
            key = row["execution_key"]
            assert key is not None, f"execution {row['id']} has no execution_key"
            if final:
                assert row["status"] not in OPEN_STATUSES, f"execution left open: {dict(row)}"
                if row["status"] != "completed":
                    assert row["error_message"], f"execution closed without a reason: {dict(row)}"
            if key.split("/")[3:4] == ["skip"]:  # `{bot}/{chain}/{seq}/skip[/{i}]`: no attempts
                continue
            run_key, _, attempt = key.rpartition("/")
            assert int(attempt) == row["attempt_number"], f"key and attempt number differ: {dict(row)}"
            runs[run_key].append(row)
        for run_key, rows in runs.items():
            rows.sort(key=lambda r: r["attempt_number"])
            summary = [(r["attempt_number"], r["status"]) for r in rows]
            assert [r["attempt_number"] for r in rows] == list(range(1, len(rows) + 1)), (
                f"run {run_key}: attempts are not numbered 1..n: {summary}"
            )
            assert all(r["status"] in NOT_LAST_STATUSES for r in rows[:-1]), (
                f"run {run_key}: an attempt other than the last is not retrying/lost: {summary}"
            )
            if final:
                assert rows[-1]["status"] != "retrying", (
                    f"run {run_key}: its last attempt is left 'retrying' with the bot stopped: {summary}"
                )

    # -------------------------------------------------------------------------- quiescence

    def teardown(self) -> None:
        try:
            if self.handle is not None and not self.failed:
                self._run("stop and settle", self._quiesce())
        finally:
            self.shared.run(self._cleanup(), 120)

    async def _quiesce(self) -> None:
        """Stop the bot, wait until nothing is in flight, check everything, replay every run."""
        self.running = False
        await self.workflow.signal(SIGNAL_STOP)

        async def probe() -> tuple[Any, ...]:
            current = await self._status()
            open_rows = await self.pool.fetchval(
                "SELECT count(*) FROM bot_task_executions WHERE bot_id = $1 AND status = ANY($2::text[])",
                self.bot,
                list(OPEN_STATUSES),
            )
            if current is None:
                return (None, open_rows, await self._open_calls())
            busy = [
                (t.id, t.state) for t in current.tasks if t.state in ("running", "retrying", "waiting_lock")
            ]
            return (current.isRunning, current.runningTasks, busy, open_rows, await self._open_calls())

        try:
            await eventually(probe, lambda value: value == (False, [], [], 0, 0), timeout=SETTLE_TIMEOUT)
        except AssertionError as error:
            raise AssertionError(
                f"the stopped bot did not settle (isRunning, runningTasks, busy tasks, open rows, "
                f"open handler calls): {error}; {await self._diagnosis()}"
            ) from None
        await self._check(final=True)
        replayer = Replayer(workflows=[BotScheduler], data_converter=pydantic_data_converter)
        for history in await self._histories():
            await replayer.replay_workflow(history)

    async def _cleanup(self) -> None:
        if self.refusal_recorder is not None:
            CORE_LOGGER.removeHandler(self.refusal_recorder)
        with contextlib.suppress(Exception):
            await terminate_started(self.task_queue)
        with contextlib.suppress(Exception):
            await self._kill_worker()
        for drain in self.drains:
            drain.cancel()
        if self.workflow_worker is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.workflow_worker.shutdown(), 60)
        if self.workflow_worker_run is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self.workflow_worker_run, 10)
        if self.http is not None:
            await self.http.aclose()
        if self.env is not None:
            with contextlib.suppress(Exception):
                await self.env.shutdown()


# ------------------------------------------------------------------------------------ the test


def run_model(database_url: str) -> None:
    shared = Shared(database_url)
    try:
        phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if SHRINK else [])
        run_state_machine_as_test(
            lambda: SchedulerModel(shared),  # type: ignore[arg-type]  # a factory is fine too
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
                deadline=None,
                database=None,
                phases=phases,
                print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        shared.close()


@pytest.mark.timeout(300 + EXAMPLES * (90 + STEPS * 15))
async def test_scheduler_model(database_url: str) -> None:
    await asyncio.to_thread(run_model, database_url)


if __name__ == "__main__":
    asyncio.run(worker_main(*sys.argv[1:4]))
