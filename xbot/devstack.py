"""`xbot dev`: the whole stack in one terminal, stopped cleanly on Ctrl-C or SIGTERM.

Order: Temporal dev server (SQLite file in the data dir), embedded PostgreSQL (unless DATABASE_URL),
migrations, search attributes, worker, API. Children run in their own sessions so that we stop them
in reverse order ourselves, and get SIGTERM from the kernel if this process dies first.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from xbot.settings import Settings

STOP_TIMEOUT_SECONDS = 15.0
READY_TIMEOUT_SECONDS = 60.0


class DevStackError(RuntimeError):
    pass


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when `xbot dev` dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path | None


@dataclass
class Supervisor:
    children: list[Child] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], env: dict[str, str], log_path: Path | None = None) -> Child:
        output: IO[bytes] | None = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            output = log_path.open("ab")
        process = subprocess.Popen(
            argv,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        if output is not None:
            output.close()
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def first_exited(self) -> Child | None:
        return next((child for child in self.children if child.process.poll() is not None), None)

    def stop_all(self) -> None:
        for child in reversed(self.children):
            _stop_child(child)
        self.children.clear()


def _stop_child(child: Child) -> None:
    if child.process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.process.pid, signal.SIGTERM)
    try:
        child.process.wait(STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        print(
            f"xbot dev: {child.name} did not stop in {STOP_TIMEOUT_SECONDS:.0f}s; killing it", file=sys.stderr
        )
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.process.pid, signal.SIGKILL)
        child.process.wait()


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _read_or_create_secret(path: Path, make: str) -> str:
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(32) if make == "token" else _fernet_key()
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def _fernet_key() -> str:
    from xbot.crypto.at_rest import generate_key

    return generate_key()


def _acquire_lock(data_dir: Path) -> IO[str]:
    lock_file = (data_dir / "dev.lock").open("a+")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "unknown"
        raise DevStackError(
            f"xbot dev is already running (pid {holder}) with data dir {data_dir}; stop it first "
            "or use another XBOT_DATA_DIR and ports"
        ) from None
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(str(os.getpid()))
    lock_file.flush()
    return lock_file


def _temporal_host_port(settings: Settings) -> tuple[str, int]:
    host, _, port = settings.temporal_address.rpartition(":")
    if not host or not port.isdigit():
        raise DevStackError(
            f"invalid setting TEMPORAL_ADDRESS: expected host:port, got {settings.temporal_address}"
        )
    return ("127.0.0.1" if host == "localhost" else host), int(port)


async def _prepare(settings: Settings, database_url: str) -> None:
    """Migrations, then wait for Temporal and register the search attributes."""
    from xbot.storage.migrate import migrate
    from xbot.temporal import connect_temporal, ensure_search_attributes

    await migrate(database_url)
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        try:
            client = await connect_temporal(settings)
            await ensure_search_attributes(client)
            return
        except Exception as error:
            if time.monotonic() > deadline:
                raise DevStackError(
                    f"Temporal dev server not ready at {settings.temporal_address}: {error}"
                ) from error
            await asyncio.sleep(0.5)


def _wait_for_api(url: str, supervisor: Supervisor) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        exited = supervisor.first_exited()
        if exited is not None:
            raise DevStackError(f"{exited.name} exited with code {exited.process.returncode} while starting")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise DevStackError(f"API not healthy at {url}/healthz after {READY_TIMEOUT_SECONDS:.0f}s")


def _raise_on_sigterm(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run_dev_stack(settings: Settings) -> int:
    from xbot.storage.pool import start_embedded_postgres, stop_embedded_postgres

    data_dir = settings.xbot_data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor()
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        lock = _acquire_lock(data_dir)
        host, port = _temporal_host_port(settings)
        for what, bind_host, bind_port in (
            ("Temporal", host, port),
            ("Temporal Web UI", host, settings.temporal_ui_port),
            ("API", settings.api_host, settings.api_port),
        ):
            if _port_in_use(bind_host, bind_port):
                raise DevStackError(f"port {bind_port} for the {what} is already in use on {bind_host}")

        env = dict(os.environ)
        env.setdefault("XBOT_ENV", "development")
        env["XBOT_DATA_DIR"] = str(data_dir)
        api_token = (
            settings.api_token.get_secret_value()
            if settings.api_token
            else _read_or_create_secret(data_dir / "api-token", "token")
        )
        env["API_TOKEN"] = api_token
        if settings.token_encryption_key is None:
            env["TOKEN_ENCRYPTION_KEY"] = _read_or_create_secret(data_dir / "token-encryption-key", "fernet")

        temporal_binary = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
        from xbot.temporal import dev_server_args

        supervisor.spawn(
            "temporal",
            [
                temporal_binary, "server", "start-dev",
                "--db-filename", str(data_dir / "temporal.sqlite"),
                "--ip", host, "--port", str(port), "--ui-port", str(settings.temporal_ui_port),
                "--namespace", settings.temporal_namespace,
                "--ui-disable-news-fetch", "--log-level", "warn",
                *dev_server_args(),
            ],
            env,
            log_path=data_dir / "logs" / "temporal.log",
        )  # fmt: skip
        database_url = settings.database_url or start_embedded_postgres(data_dir)
        env["DATABASE_URL"] = database_url
        asyncio.run(_prepare(settings, database_url))

        python = sys.executable
        supervisor.spawn("worker", [python, "-m", "launch.cli", "worker"], env)
        supervisor.spawn("api", [python, "-m", "launch.cli", "api"], env)
        api_url = f"http://{settings.api_host}:{settings.api_port}"
        _wait_for_api(api_url, supervisor)
        print(
            "\n".join(
                [
                    "",
                    "xbot dev is running. Ctrl-C stops everything.",
                    f"  API          {api_url}",
                    f"  API docs     {api_url}/docs",
                    f"  Dashboard    {api_url}/",
                    f"  Temporal UI  http://{host}:{settings.temporal_ui_port}",
                    f"  Temporal     {settings.temporal_address} (namespace {settings.temporal_namespace})",
                    f"  API token    {api_token}",
                    f"  Data dir     {data_dir}",
                    "",
                ]
            ),
            flush=True,
        )
        while (exited := supervisor.first_exited()) is None:
            time.sleep(0.5)
        print(
            f"xbot dev: {exited.name} exited with code {exited.process.returncode}; stopping", file=sys.stderr
        )
        return 1
    except DevStackError as error:
        print(f"xbot dev: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nxbot dev: stopping…", file=sys.stderr)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        supervisor.stop_all()
        stop_embedded_postgres()
        with contextlib.suppress(NameError):
            lock.close()
