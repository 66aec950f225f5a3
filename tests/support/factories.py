"""Rows for tests, written the way the product writes them.

Bots go through `xbot.bots.create_bot` (the API's repository: webhook URL and LLM key encrypted,
tokens stored by `xbot.x.tokens.store_tokens`). Rows the product has no function to write yet (task
definitions with test-only task types, executions, logs, pulled posts and replies with chosen
states and times) are plain SQL here, and only here.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg

from xbot.bots import BotCreate, BotTokensIn, create_bot
from xbot.crypto.at_rest import TokenCipher
from xbot.storage.bots import advance_mentions_cursor, set_scheduler_enabled

SCHEDULE_COLUMNS = {"interval_minutes", "interval_seconds", "cron_expression"}


def new_bot_id(prefix: str = "bot") -> str:
    """Unique per test: workflow ids (= bot ids) outlive a test on a shared Temporal server."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def insert_bot(
    pool: asyncpg.Pool,
    bot_id: str | None = None,
    *,
    cipher: TokenCipher | None = None,
    tokens: tuple[str, str] | None = None,
    expires_in: timedelta = timedelta(hours=2),
    scheduler_enabled: bool = False,
    mentions_since_id: str | None = None,
    **fields: Any,
) -> str:
    """A bot created as the API creates it; `fields` are `BotCreate`'s (the name defaults to the id).

    `tokens` (access, refresh) are stored encrypted, expiring `expires_in` from now; a webhook URL
    or LLM key among the fields needs the `cipher` too."""
    bot_id = bot_id or new_bot_id()
    fields.setdefault("name", bot_id)
    if tokens is not None:
        access, refresh = tokens
        fields["tokens"] = BotTokensIn(
            access_token=access, refresh_token=refresh, expires_at=datetime.now(UTC) + expires_in
        )
    await create_bot(pool, BotCreate(id=bot_id, **fields), cipher)
    if scheduler_enabled:
        await set_scheduler_enabled(pool, bot_id, True)
    if mentions_since_id is not None:
        await advance_mentions_cursor(pool, bot_id, mentions_since_id)
    return bot_id


class XAccount(Protocol):
    """A fake X account (tests/fakes/fake_x.FakeX, tests/chaos/fleet.ChaosX): it issues token pairs."""

    def issue_tokens(self) -> tuple[str, str]: ...


async def insert_connected_bot(
    pool: asyncpg.Pool,
    cipher: TokenCipher,
    account: XAccount,
    bot_id: str | None = None,
    *,
    expires_in: timedelta = timedelta(hours=2),
    **fields: Any,
) -> str:
    """A pro-tier bot connected to `account`: a fresh token pair from it, stored encrypted."""
    bot_id = bot_id or new_bot_id()
    fields = {"name": f"Bot {bot_id}", "plan_tier": "pro", **fields}
    tokens = account.issue_tokens()
    return await insert_bot(pool, bot_id, cipher=cipher, tokens=tokens, expires_in=expires_in, **fields)


async def insert_task(
    pool: asyncpg.Pool,
    bot_id: str,
    task_type: str = "noop",
    *,
    schedule: dict[str, Any] | None = None,
    due_now: bool = False,
    **columns: Any,
) -> int:
    """A task definition of any task type (test-only types included); `schedule` applies when the
    columns give none (default: hourly). `due_now`: planned to run at the database's now()."""
    if not SCHEDULE_COLUMNS & set(columns):
        columns.update(schedule or {"interval_minutes": 60})
    names = ["bot_id", "task_type", *columns]
    values = [f"${index}" for index in range(1, len(names) + 1)]
    if due_now:
        names.append("next_planned_run_at")
        values.append("now()")
    task_id: int = await pool.fetchval(
        f"INSERT INTO bot_task_definitions ({', '.join(names)}) VALUES ({', '.join(values)}) RETURNING id",
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
    """A pulled mention (by `author`, stored as an X user) and a reply to it in `status`."""
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
