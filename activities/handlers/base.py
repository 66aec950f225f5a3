"""What every task handler is given and must provide."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import asyncpg
import httpx

from xbot.settings import Settings


@dataclass(frozen=True)
class HandlerDeps:
    """Clients injected into handlers; built once per worker process."""

    pool: asyncpg.Pool
    settings: Settings
    http: httpx.AsyncClient


@dataclass(frozen=True)
class TaskContext:
    """One run of one task definition, as the task runner hands it to a handler."""

    bot_id: str
    task_id: int
    task_type: str
    config: dict[str, Any]
    due_at: datetime
    attempt: int
    execution_id: int
    extra: dict[str, Any] = field(default_factory=dict)


class TaskHandler(Protocol):
    """Runs one task; returns JSON-able counts stored as `result_data`.

    Raise `xbot.errors.NonRetryableTaskError` for failures retrying cannot fix and
    `xbot.errors.RateLimitedError` when an X endpoint's window is exhausted.
    """

    async def run(self, ctx: TaskContext) -> dict[str, Any]: ...


# A handler may also define `async def prepare(self, ctx: TaskContext) -> None`: the task runner
# calls it before the due instant (checks, lookups), so that at the instant only `run`'s effect is
# left. It raises like `run`; `run` must still work alone (it re-checks what `prepare` did not mark
# done in `ctx.extra`).
