"""Shared steps of the chaos scenarios: bots on the fake X fleet, worker and API processes, waiting."""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from temporalio.client import Client, WorkflowHandle

from tests.chaos.conftest import Fakes, chaos_scale
from tests.chaos.fleet import ChaosX
from tests.chaos.infra import REPO, Proc
from tests.support import schedulers, waiting
from tests.support.factories import insert_connected_bot, insert_task
from workflows.models import SIGNAL_RELOAD_TASKS, SIGNAL_STOP, SchedulerOptions, SchedulerStatus
from xbot.crypto.at_rest import TokenCipher

T = TypeVar("T")

# Quick detection of a dead worker (heartbeats), so that a retry starts soon after a kill.
FAST = SchedulerOptions(heartbeat_timeout_seconds=2.0)
# The four handlers of the product, in the order a bot's round runs them.
X_TASKS = ("pull_mentions", "generate_replies", "reply_to_mentions", "user_fetch")
# Settings the child processes must not inherit from whoever runs the tests.
INHERITED_PREFIXES = (
    "DATABASE_URL",
    "TEMPORAL_",
    "X_",
    "OPENAI_",
    "API_",
    "ENCRYPTION_KEY",
    "TOKEN_",
    "XBOT_",
)


async def eventually(
    probe: Callable[[], Awaitable[T]],
    check: Callable[[T], object],
    timeout: float,
    what: str = "condition",
    interval: float = 0.2,
) -> T:
    """`tests.support.waiting.eventually` with the timeout times the chaos scale: bigger runs get more
    patience, never less."""
    return await waiting.eventually(probe, check, timeout * chaos_scale(), what, interval)


# ----------------------------------------------------------------------------------------- bots


async def add_bot(
    pool: asyncpg.Pool,
    cipher: TokenCipher,
    account: ChaosX,
    bot_id: str,
    token_lifetime: timedelta = timedelta(hours=2),
    **columns: Any,
) -> str:
    """A bot whose X account is `account`, with a fresh token pair stored encrypted."""
    identity = {"x_user_id": account.bot_user_id, "x_username": account.bot_username}
    return await insert_connected_bot(
        pool, cipher, account, bot_id, expires_in=token_lifetime, **identity, **columns
    )


async def add_task(pool: asyncpg.Pool, bot_id: str, task_type: str, **columns: Any) -> int:
    """A definition due now; `interval_seconds` 5 unless the columns say otherwise."""
    columns.setdefault("retry_delay_minutes", 0.01)
    return await insert_task(
        pool, bot_id, task_type, schedule={"interval_seconds": 5}, due_now=True, **columns
    )


async def add_x_round(
    pool: asyncpg.Pool, bot_id: str, interval_seconds: int = 4, **columns: Any
) -> dict[str, int]:
    """The product's four X tasks for one bot, highest priority first in a round."""
    ids = {}
    config = {
        # Mentions seeded before a bot's first pull must be answered too: a backfill, not "from now".
        "pull_mentions": {"max_results": 5, "max_pages": 50, "backfill": True},
        "generate_replies": {"context_depth": 0},
        "reply_to_mentions": {"max_replies_per_run": 100},
        "user_fetch": {"max_age_hours": 0},
    }
    for priority, task_type in zip((40, 30, 20, 10), X_TASKS, strict=True):
        ids[task_type] = await add_task(
            pool,
            bot_id,
            task_type,
            priority=priority,
            interval_seconds=interval_seconds,
            config=config[task_type],
            **columns,
        )
    return ids


async def start_scheduler(
    client: Client, bot_id: str, task_queue: str, options: SchedulerOptions = FAST
) -> WorkflowHandle[Any, Any]:
    return await schedulers.start_scheduler(client, bot_id, task_queue, options)


async def status(client: Client, bot_id: str) -> SchedulerStatus:
    return await schedulers.query_status(client.get_workflow_handle(bot_id))


async def stop_and_heal(client: Client, bot_ids: Sequence[str], timeout: float = 60) -> None:
    """Stop every scheduler, wait until nothing runs, then make each reload its plan: the round
    that closes executions left `started` by dead workers (crash healing)."""
    for bot_id in bot_ids:
        await client.get_workflow_handle(bot_id).signal(SIGNAL_STOP)

    async def busy() -> list[str]:
        statuses = [await status(client, bot_id) for bot_id in bot_ids]
        return [s.botId for s in statuses if s.isRunning or s.runningTasks]

    await eventually(busy, lambda left: not left, timeout, "every scheduler stopped and idle")
    for bot_id in bot_ids:
        await client.get_workflow_handle(bot_id).signal(SIGNAL_RELOAD_TASKS)


async def open_executions(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT id, bot_id, task_type, attempt_number, worker_id FROM bot_task_executions"
        " WHERE status = 'started' ORDER BY id"
    )
    return rows


class MentionFeed:
    """New mentions arriving while the test runs, each from a new author (so each needs a reply)."""

    def __init__(self, accounts: list[ChaosX], rng: random.Random) -> None:
        self.accounts = accounts
        self.rng = rng
        self.authors = 0
        self.mentions: dict[str, list[str]] = {a.tag: [] for a in accounts}

    def add(self, account: ChaosX | None = None) -> None:
        account = account or self.rng.choice(self.accounts)
        self.authors += 1
        author = str(70_000 + self.authors)
        account.add_user(author, f"fan{self.authors}", f"Fan {self.authors}")
        mention = account.mention(author, f"@{account.bot_username} question {self.authors}?")
        self.mentions[account.tag].append(mention)

    async def run(self, stop: asyncio.Event, every: float) -> None:
        while not stop.is_set():
            self.add()
            await asyncio.sleep(every)


# ------------------------------------------------------------------------------------- processes


def base_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(INHERITED_PREFIXES)}
    env.update(PYTHONUNBUFFERED="1", XBOT_ENV="test", **settings)
    return env


def service_env(
    fakes: Fakes,
    database_url: str,
    temporal_address: str,
    task_queue: str,
    token_key: str,
    x_timeout: float = 2.0,
    **extra: str,
) -> dict[str, str]:
    """Everything a worker or the API reads from the environment, pointing at the loopback fakes."""
    return base_env(
        DATABASE_URL=database_url,
        TEMPORAL_ADDRESS=temporal_address,
        TEMPORAL_NAMESPACE="default",
        TEMPORAL_TASK_QUEUE=task_queue,
        X_API_BASE_URL=fakes.x_url,
        X_CLIENT_ID=fakes.client_id,
        X_CLIENT_SECRET=fakes.client_secret,
        X_REQUEST_TIMEOUT_SECONDS=str(x_timeout),
        OPENAI_BASE_URL=fakes.llm_url,
        OPENAI_API_KEY=fakes.llm.api_key,
        OPENAI_MODEL="chaos-model",
        TOKEN_ENCRYPTION_KEY=token_key,
        **extra,
    )


def worker_proc(name: str, env: dict[str, str], log_dir: Path) -> Proc:
    """`python worker.py`, run from the log directory so that no `.env` file is picked up."""
    return Proc(name, [sys.executable, str(REPO / "worker.py")], env, log_dir / f"{name}.log", cwd=log_dir)


def api_proc(env: dict[str, str], port: int, log_dir: Path) -> Proc:
    argv = [sys.executable, "-m", "launch.cli", "api", "--host", "127.0.0.1", "--port", str(port)]
    return Proc("api", argv, env, log_dir / "api.log", cwd=log_dir)


async def wait_for_log(proc: Proc, needle: str, timeout: float = 90) -> None:
    """Until the process printed `needle` (e.g. the worker's "polling task queue")."""
    deadline = time.monotonic() + timeout
    while needle not in proc.current_output():
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited before printing {needle!r}\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{proc.name} did not print {needle!r} in {timeout:g} s\n{proc.tail()}")
        await asyncio.sleep(0.1)


WORKER_READY = "worker polling task queue"
