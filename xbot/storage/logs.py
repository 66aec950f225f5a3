"""Rows of the `logs` table: the per-bot feed operators read. Never put tokens or post text here."""

from __future__ import annotations

from typing import Any, Literal

import asyncpg

LogLevel = Literal["debug", "info", "warn", "error"]


async def write_log(
    db: asyncpg.Pool | asyncpg.Connection,
    bot_id: str | None,
    level: LogLevel,
    content: str,
    context: dict[str, Any] | None = None,
    task_execution_id: int | None = None,
) -> None:
    await db.execute(
        "INSERT INTO logs (bot_id, level, content, context, task_execution_id) VALUES ($1, $2, $3, $4, $5)",
        bot_id,
        level,
        content,
        context,
        task_execution_id,
    )
