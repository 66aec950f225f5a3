"""Rows written straight to the database, as the worker would have written them."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg


async def insert_bot(pool: asyncpg.Pool, bot_id: str, **columns: object) -> None:
    names = ["id", "name", *columns]
    placeholders = ", ".join(f"${index}" for index in range(1, len(names) + 1))
    await pool.execute(
        f"INSERT INTO bots ({', '.join(names)}) VALUES ({placeholders})", bot_id, bot_id, *columns.values()
    )


async def insert_definition(
    pool: asyncpg.Pool, bot_id: str, task_type: str = "noop", **columns: object
) -> int:
    if not {"interval_minutes", "interval_seconds", "cron_expression"} & set(columns):
        columns["interval_minutes"] = 60
    names = ["bot_id", "task_type", *columns]
    placeholders = ", ".join(f"${index}" for index in range(1, len(names) + 1))
    task_id: int = await pool.fetchval(
        f"INSERT INTO bot_task_definitions ({', '.join(names)}) VALUES ({placeholders}) RETURNING id",
        bot_id,
        task_type,
        *columns.values(),
    )
    return task_id


async def insert_execution(
    pool: asyncpg.Pool,
    bot_id: str,
    task_id: int | None,
    status: str,
    started_at: datetime,
    *,
    task_type: str = "noop",
    duration_ms: int | None = None,
    due_at: datetime | None = None,
    error: str | None = None,
    attempt: int = 1,
) -> int:
    execution_id: int = await pool.fetchval(
        """
        INSERT INTO bot_task_executions (bot_id, task_definition_id, task_type, status, started_at,
            completed_at, duration_ms, due_at, error_message, attempt_number)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id
        """,
        bot_id,
        task_id,
        task_type,
        status,
        started_at,
        started_at + timedelta(milliseconds=duration_ms) if duration_ms is not None else None,
        duration_ms,
        due_at,
        error,
        attempt,
    )
    return execution_id


async def insert_log(pool: asyncpg.Pool, bot_id: str, level: str, content: str, at: datetime) -> int:
    log_id: int = await pool.fetchval(
        "INSERT INTO logs (bot_id, level, content, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        bot_id,
        level,
        content,
        at,
    )
    return log_id


async def insert_reply(
    pool: asyncpg.Pool,
    bot_id: str,
    x_post_id: str,
    *,
    mention: str = "@bot hello?",
    text: str = "Hello back!",
    status: str = "pending_approval",
    author: tuple[str, str] | None = ("42", "alice"),
) -> int:
    if author is not None:
        await pool.execute(
            "INSERT INTO x_users (x_user_id, username) VALUES ($1, $2) ON CONFLICT DO NOTHING", *author
        )
    post_id = await pool.fetchval(
        "INSERT INTO pulled_posts (bot_id, x_post_id, author_x_user_id, text) VALUES ($1, $2, $3, $4) RETURNING id",
        bot_id,
        x_post_id,
        author[0] if author else None,
        mention,
    )
    reply_id: int = await pool.fetchval(
        "INSERT INTO post_replies (bot_id, pulled_post_id, in_reply_to_x_post_id, status, text)"
        " VALUES ($1, $2, $3, $4, $5) RETURNING id",
        bot_id,
        post_id,
        x_post_id,
        status,
        text,
    )
    return reply_id
