"""What a benchmark run needs, all on loopback: Temporal dev server, PostgreSQL, workers.

Every child runs in its own session, dies with this process (PR_SET_PDEATHSIG) and is measured
with psutil (CPU seconds, RSS). One PostgreSQL serves a whole invocation (a fresh database per
scenario); each scenario gets a fresh in-memory Temporal dev server so leftovers cannot skew it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import asyncpg
import psutil
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from bench import profile
from bench.profile import Profiler, summarize
from xbot import localstack
from xbot.localstack import (
    READY_TIMEOUT_SECONDS,
    STOP_TIMEOUT_SECONDS,
    ChildProcess,
    EmbeddedPostgres,
    LocalStackError,
    dev_server_argv,
    free_port,
    sqlite_pragmas,
    temporal_binary,
    wait_for_dev_server,
    with_database,
)
from xbot.storage.migrate import migrate

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """Something the benchmark needs could not be started; the message says what."""


@dataclass
class ManagedProcess(ChildProcess):
    """A child process we started, with its resource figures."""

    _ps: psutil.Process | None = field(default=None, repr=False)
    profiler: Profiler | None = field(default=None, repr=False)

    @property
    def ps(self) -> psutil.Process:
        if self._ps is None:
            self._ps = psutil.Process(self.popen.pid)
        return self._ps

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process and its live children."""
        total = 0.0
        with contextlib.suppress(psutil.Error):
            times = self.ps.cpu_times()
            total += times.user + times.system
            for child in self.ps.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child_times = child.cpu_times()
                    total += child_times.user + child_times.system
        return total

    def rss_bytes(self) -> int:
        with contextlib.suppress(psutil.Error):
            return int(self.ps.memory_info().rss)
        return 0

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS, first: signal.Signals = signal.SIGTERM) -> bool:
        if self.profiler is not None:
            output = self.profiler.stop()
            profile.collected[output.stem] = summarize(output)
            self.profiler = None
        return self.alive() and super().stop(timeout, first)


def spawn(
    name: str, argv: list[str], env: dict[str, str], log_path: Path, *, profiled: bool = False
) -> ManagedProcess:
    child = localstack.spawn(name, argv, env, log_path, cwd=PROJECT_ROOT)
    process = ManagedProcess(name, child.popen, log_path)
    if profiled and profile.profile_dir is not None:
        process.profiler = Profiler(child.popen.pid, profile.profile_dir / f"{name}-{child.popen.pid}.txt")
    return process


class Postgres:
    """`DATABASE_URL` when given, else an embedded PostgreSQL in a temporary directory."""

    def __init__(self, database_url: str | None) -> None:
        self._configured = database_url
        self._server: EmbeddedPostgres | None = None
        self._created: list[str] = []
        self.server_url = ""

    def start(self) -> str:
        if self._configured:
            self.server_url = self._configured
            return self.server_url
        # Short path: the Unix socket lives here and socket paths are limited to ~100 bytes.
        self._server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="xbotbench", dir="/tmp")))
        self.server_url = self._server.url
        return self.server_url

    async def new_database(self) -> str:
        """A fresh, migrated database on the server (the configured one itself if we may not create)."""
        name = f"xbot_bench_{uuid.uuid4().hex[:10]}"
        admin = await asyncpg.connect(self.server_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
            url = with_database(self.server_url, name)
            self._created.append(name)
        except asyncpg.InsufficientPrivilegeError:
            url = self.server_url
        finally:
            await admin.close()
        await migrate(url)
        return url

    async def version(self) -> str:
        connection = await asyncpg.connect(self.server_url)
        try:
            return str(await connection.fetchval("SHOW server_version"))
        finally:
            await connection.close()

    async def drop_created(self) -> None:
        if not self._created:
            return
        admin = await asyncpg.connect(self.server_url)
        try:
            for name in self._created:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        self._created.clear()

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def temporal_cli_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([temporal_binary(), "--version"], capture_output=True, text=True, timeout=20)
        return out.stdout.strip().removeprefix("temporal version ").strip()
    return "unknown"


def base_child_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TEMPORAL_", "XBOT_"))}
    env.pop("DATABASE_URL", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# Where each scenario's dev server keeps its state: as `xbot dev` keeps it.
DEV_SERVER_STORE = f"SQLite file ({', '.join(sqlite_pragmas('normal'))})"


class BenchEnv:
    """One scenario's Temporal dev server and workers, on top of the invocation's PostgreSQL."""

    def __init__(self, postgres: Postgres, workdir: Path, name: str) -> None:
        self.postgres = postgres
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.temporal: ManagedProcess | None = None
        self.address = ""
        self.metrics_url = ""
        self._client: Client | None = None
        self._project_client: Client | None = None
        self._workers: list[ManagedProcess] = []
        self.token_key = _fernet_key()

    @property
    def client(self) -> Client:
        if self._client is None:
            raise BenchError("Temporal client used before the environment started")
        return self._client

    async def __aenter__(self) -> BenchEnv:
        await self.start_temporal()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for worker in reversed(self._workers):
            worker.stop()
        self._workers.clear()
        if self.temporal is not None:
            self.temporal.stop()
            self.temporal = None

    async def start_temporal(self) -> None:
        port, metrics_port = free_port(), free_port()
        self.address = f"127.0.0.1:{port}"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        # A SQLite file with the pragmas `xbot dev` uses: the server as users run it.
        argv = dev_server_argv(
            port, db_file=self.workdir / "temporal.sqlite", http_port=free_port(), metrics_port=metrics_port
        )
        self.temporal = spawn("temporal", argv, base_child_env(), self.workdir / "temporal.log")
        try:
            self._client = await wait_for_dev_server(
                lambda: Client.connect(self.address, data_converter=pydantic_data_converter),
                self.temporal,
                READY_TIMEOUT_SECONDS,
                f"Temporal dev server at {self.address}",
            )
        except LocalStackError as error:
            raise BenchError(str(error)) from error

    async def project_client(self) -> Client:
        """A client with the project's own data converter (whatever `connect_temporal` configures)."""
        if self._project_client is None:
            from xbot.settings import load_settings
            from xbot.temporal import connect_temporal

            settings = load_settings(
                TEMPORAL_ADDRESS=self.address, XBOT_ENV="test", TOKEN_ENCRYPTION_KEY=self.token_key
            )
            self._project_client = await connect_temporal(settings)
        return self._project_client

    def worker_env(self, task_queue: str, database_url: str | None = None) -> dict[str, str]:
        env = base_child_env()
        env.update(
            TEMPORAL_ADDRESS=self.address,
            TEMPORAL_TASK_QUEUE=task_queue,
            XBOT_ENV="test",
            TOKEN_ENCRYPTION_KEY=self.token_key,
            XBOT_DATA_DIR=str(self.workdir / "data"),
        )
        if database_url:
            env["DATABASE_URL"] = database_url
        return env

    async def start_project_worker(self, task_queue: str, database_url: str) -> ManagedProcess:
        """The project's own worker (`xbot worker`) as a separate process."""
        argv = [sys.executable, "-m", "launch.cli", "worker"]
        env = self.worker_env(task_queue, database_url)
        return await self._start_worker("project-worker", argv, env, task_queue)

    async def start_baseline_worker(self, task_queue: str, samples_path: Path) -> ManagedProcess:
        argv = [
            sys.executable,
            "-m",
            "bench.baselines",
            "--address",
            self.address,
            "--task-queue",
            task_queue,
            "--samples",
            str(samples_path),
        ]
        return await self._start_worker("baseline-worker", argv, self.worker_env(task_queue), task_queue)

    async def _start_worker(
        self, name: str, argv: list[str], env: dict[str, str], task_queue: str
    ) -> ManagedProcess:
        worker = spawn(name, argv, env, self.workdir / f"{name}-{task_queue}.log", profiled=True)
        self._workers.append(worker)
        await self.wait_for_pollers(task_queue, worker)
        return worker

    async def wait_for_pollers(self, task_queue: str, worker: ManagedProcess, *, own: bool = False) -> None:
        """Ready when the worker polls both the workflow and the activity task queue (`own`: this
        process itself, not another worker still listed on the queue, e.g. one just killed)."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        kinds = (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)
        while time.monotonic() < deadline:
            if not worker.alive():
                raise BenchError(f"{worker.name} exited with {worker.popen.returncode}:\n{worker.log_tail()}")
            ready = True
            for kind in kinds:
                response = await self.client.workflow_service.describe_task_queue(
                    DescribeTaskQueueRequest(
                        namespace=self.client.namespace,
                        task_queue=TaskQueue(name=task_queue),
                        task_queue_type=kind,
                    )
                )
                pid = f"{worker.popen.pid}@"
                ready = ready and any(not own or p.identity.startswith(pid) for p in response.pollers)
            if ready:
                return
            await asyncio.sleep(0.1)
        raise BenchError(f"{worker.name} did not poll {task_queue} within {READY_TIMEOUT_SECONDS:.0f}s")

    def stop_worker(self, worker: ManagedProcess) -> None:
        worker.stop()
        with contextlib.suppress(ValueError):
            self._workers.remove(worker)

    async def terminate_running(self, query: str, concurrency: int = 50) -> int:
        """Terminate the running workflows matching a visibility query; returns how many."""
        ids = [
            execution.id
            async for execution in self.client.list_workflows(f"ExecutionStatus = 'Running' AND {query}")
        ]
        semaphore = asyncio.Semaphore(concurrency)

        async def terminate(workflow_id: str) -> None:
            async with semaphore:
                with contextlib.suppress(Exception):
                    await self.client.get_workflow_handle(workflow_id).terminate("benchmark phase over")

        await asyncio.gather(*(terminate(workflow_id) for workflow_id in ids))
        return len(ids)

    async def server_metric(self, name: str, *labels: str) -> float:
        """Sum of a Prometheus counter from the dev server's /metrics (series with all the labels)."""
        import httpx

        async with httpx.AsyncClient(timeout=10) as http:
            text = (await http.get(self.metrics_url)).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and all(label in line for label in labels):
                with contextlib.suppress(ValueError):
                    total += float(line.rsplit(" ", 1)[1])
        return total


def _fernet_key() -> str:
    import base64

    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
