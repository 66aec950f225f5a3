"""The `logs` table: the per-bot feed operators read. Never put tokens or post text here."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel

from xbot.storage.pages import Where, newest_first
from xbot.storage.pool import Executor

LogLevel = Literal["debug", "info", "warn", "error"]
LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warn", "error")
# The live feed reads at most this many new entries per poll.
FEED_BATCH = 500


# A row of `logs`, as the API returns it (no docstring: it would change the schema).
class LogEntry(BaseModel):
    id: int
    bot_id: str | None
    level: str
    content: str
    context: Any = None
    task_execution_id: int | None
    created_at: datetime


async def write_log(
    db: Executor,
    bot_id: str | None,
    level: LogLevel,
    content: str,
    context: dict[str, Any] | None = None,
    task_execution_id: int | None = None,
    created_at: datetime | None = None,
) -> int:
    """Add an entry (`created_at`: now, unless given); its id."""
    log_id: int = await db.fetchval(
        "INSERT INTO logs (bot_id, level, content, context, task_execution_id, created_at)"
        " VALUES ($1, $2, $3, $4, $5, coalesce($6, now())) RETURNING id",
        bot_id,
        level,
        content,
        context,
        task_execution_id,
        created_at,
    )
    return log_id


async def latest_log_id(db: Executor, bot_id: str) -> int:
    """The id of the bot's newest entry; 0 when it has none."""
    last: int = await db.fetchval("SELECT coalesce(max(id), 0) FROM logs WHERE bot_id = $1", bot_id)
    return last


async def logs_after(db: Executor, bot_id: str, after: int) -> list[asyncpg.Record]:
    """The bot's entries with an id above `after`, oldest first, at most `FEED_BATCH`."""
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT id, level, content, created_at FROM logs WHERE bot_id = $1 AND id > $2 ORDER BY id"
        f" LIMIT {FEED_BATCH}",
        bot_id,
        after,
    )
    return rows


async def page_logs(
    db: Executor,
    bot_id: str,
    *,
    level: LogLevel | None,
    since: datetime | None,
    until: datetime | None,
    before: tuple[datetime, int] | None,
    limit: int,
) -> list[LogEntry]:
    """The bot's entries newest first: at least `level`, created in [since, until), older than the
    (created_at, id) `before`; up to `limit` of them."""
    where = Where("bot_id = $1", args=(bot_id,))
    where.add("level = ANY({})", list(LEVELS[LEVELS.index(level) :]) if level is not None else None)
    where.add("created_at >= {}", since)
    where.add("created_at < {}", until)
    rows = await newest_first(
        db,
        "SELECT id, bot_id, level, content, context, task_execution_id, created_at FROM logs",
        where,
        order=("created_at", "id"),
        before=before,
        limit=limit,
    )
    return [LogEntry.model_validate(dict(row)) for row in rows]
