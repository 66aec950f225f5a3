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
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from xbot.localstack import ChildProcess, EmbeddedPostgres, dev_server_argv, free_port, port_open, spawn

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ processes


@dataclass
class Proc:
    """A child process in its own session (process group), its output going to `log_path`."""

    name: str
    argv: Sequence[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path = REPO
    child: ChildProcess | None = None
    # Every log file this process ever wrote (one per start), for audits.
    logs: list[Path] = field(default_factory=list)

    def start(self) -> None:
        assert self.child is None or not self.child.alive(), f"{self.name} already running"
        path = self.log_path.with_name(f"{self.log_path.stem}-{len(self.logs) + 1}{self.log_path.suffix}")
        self.logs.append(path)
        self.child = spawn(self.name, list(self.argv), self.env, path, cwd=self.cwd, append=False)

    @property
    def popen(self) -> subprocess.Popen[bytes] | None:
        return self.child.popen if self.child is not None else None

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal the whole process group, then reap the leader (SIGKILL if `sig` did not end it)."""
        if self.child is not None:
            self.child.stop(15, first=sig)

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


class StoppablePostgres(EmbeddedPostgres):
    """The embedded PostgreSQL in its own directory under `root`, stopped and started by the tests."""

    def __init__(self, root: Path) -> None:
        super().__init__(root / "pgdata", cleanup_mode=None)

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            if self.running():
                self.stop("immediate")
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
        argv = dev_server_argv(
            self.port, db_file=self.db_file, http_port=free_port(), metrics_port=free_port()
        )
        self.binary = argv[0]
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
