"""`xbot dev` end to end: real binaries, real ports on loopback, clean stop, single instance."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

pytestmark = [pytest.mark.devserver, pytest.mark.system]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _dev_env(data_dir: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "API_TOKEN", "TOKEN_ENCRYPTION_KEY", "XBOT_ENV"}
    }
    env.update(
        XBOT_DATA_DIR=str(data_dir),
        TEMPORAL_ADDRESS=f"127.0.0.1:{_free_port()}",
        TEMPORAL_UI_PORT=str(_free_port()),
        API_PORT=str(_free_port()),
        PYTHONUNBUFFERED="1",
    )
    return env


def _xbot(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "launch.cli", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class OutputCollector:
    """Reads a child's output on a thread so the test can wait for a line without blocking."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.text = ""
        self._thread = threading.Thread(target=self._pump, args=(process,), daemon=True)
        self._thread.start()

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.text += line

    def wait_for(self, marker: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self.text:
                return self.text
            if not self._thread.is_alive():
                break
            time.sleep(0.2)
        raise AssertionError(f"{marker!r} not printed within {timeout}s; output:\n{self.text[-4000:]}")


@pytest.fixture
def running_stack(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, str], str]]:
    env = _dev_env(tmp_path / "data")
    process = _xbot("dev", env=env, cwd=tmp_path)
    try:
        banner = OutputCollector(process).wait_for("Ctrl-C stops everything", timeout=90)
        yield process, env, banner
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def test_dev_stack_is_healthy_single_and_stops_cleanly(
    running_stack: tuple[subprocess.Popen[str], dict[str, str], str], tmp_path: Path
) -> None:
    process, env, banner = running_stack
    api = f"http://127.0.0.1:{env['API_PORT']}"
    token = (Path(env["XBOT_DATA_DIR"]) / "api-token").read_text().strip()
    assert f"API token    {token}" in banner

    health = httpx.get(f"{api}/healthz", timeout=5)
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "database": "ok", "temporal": "ok"}
    assert httpx.get(f"http://127.0.0.1:{env['TEMPORAL_UI_PORT']}/", timeout=5).status_code == 200
    assert (
        httpx.get(f"{api}/bots", headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 200
    )

    # A second `xbot dev` on the same data dir says so and leaves the first alone.
    second = _xbot("dev", env=env, cwd=tmp_path)
    output, _ = second.communicate(timeout=30)
    assert second.returncode == 1
    assert "already running" in output
    assert process.poll() is None

    children = psutil.Process(process.pid).children(recursive=True)
    # Worker, API, Temporal at least; the embedded PostgreSQL is started detached by pg_ctl.
    assert len(children) >= 3
    postgres_pids = [
        proc.pid
        for proc in psutil.process_iter(["cmdline"])
        if proc.info["cmdline"]
        and str(Path(env["XBOT_DATA_DIR"]).resolve() / "postgres") in " ".join(proc.info["cmdline"])
    ]
    assert postgres_pids, "embedded PostgreSQL should run under the data dir"

    process.send_signal(signal.SIGTERM)
    assert process.wait(45) == 0
    time.sleep(0.5)
    leftovers = [child.pid for child in children if child.is_running() and child.status() != "zombie"]
    leftovers += [
        pid for pid in postgres_pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
    ]
    assert leftovers == [], f"processes left behind: {leftovers}"
    # The dev server's SQLite file is written ahead (WAL): half the server CPU of SQLite's default
    # journal when many bots start (xbot.localstack.sqlite_pragmas).
    with contextlib.closing(sqlite3.connect(Path(env["XBOT_DATA_DIR"]) / "temporal.sqlite")) as database:
        assert database.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
