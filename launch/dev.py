"""`xbot dev`: the whole stack in one terminal, stopped cleanly on Ctrl-C or SIGTERM.

Order: Temporal dev server (SQLite file in the data dir), embedded PostgreSQL (unless DATABASE_URL),
migrations, search attributes, worker, API. Children run in their own sessions so that we stop them
in reverse order ourselves, and get SIGTERM from the kernel if this process dies first.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import IO

import httpx

from xbot.localstack import (
    ChildProcess,
    LocalStackError,
    Supervisor,
    dev_server_argv,
    port_in_use,
    wait_for_dev_server,
)
from xbot.settings import Settings

READY_TIMEOUT_SECONDS = 60.0


class DevStackError(RuntimeError):
    pass


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


async def _prepare(settings: Settings, database_url: str, temporal: ChildProcess) -> None:
    """Migrations, then wait for Temporal and register the search attributes."""
    from xbot.storage.migrate import migrate
    from xbot.temporal import connect_temporal

    await migrate(database_url)
    await wait_for_dev_server(
        lambda: connect_temporal(settings),
        temporal,
        what=f"Temporal dev server at {settings.temporal_address}",
    )


def _wait_for_api(url: str, supervisor: Supervisor) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        exited = supervisor.first_exited()
        if exited is not None:
            raise DevStackError(f"{exited.name} exited with code {exited.popen.returncode} while starting")
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
    supervisor = Supervisor("xbot dev")
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        lock = _acquire_lock(data_dir)
        host, port = _temporal_host_port(settings)
        for what, bind_host, bind_port in (
            ("Temporal", host, port),
            ("Temporal Web UI", host, settings.temporal_ui_port),
            ("API", settings.api_host, settings.api_port),
        ):
            if port_in_use(bind_host, bind_port):
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

        temporal = supervisor.spawn(
            "temporal",
            dev_server_argv(
                port,
                ip=host,
                db_file=data_dir / "temporal.sqlite",
                ui_port=settings.temporal_ui_port,
                namespace=settings.temporal_namespace,
                log_level="warn",
                sqlite_sync=settings.temporal_dev_sqlite_sync,
            ),
            env,
            log_path=data_dir / "logs" / "temporal.log",
        )
        database_url = settings.database_url or start_embedded_postgres(data_dir)
        env["DATABASE_URL"] = database_url
        asyncio.run(_prepare(settings, database_url, temporal))

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
            f"xbot dev: {exited.name} exited with code {exited.popen.returncode}; stopping", file=sys.stderr
        )
        return 1
    except (DevStackError, LocalStackError) as error:
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
