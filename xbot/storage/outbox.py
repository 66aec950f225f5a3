"""Rows of `notification_outbox`: Discord notices queued per bot, and where each stands.

A message is `pending` until sent (`sent`) or given up (`failed`); `next_attempt_at` says when a
pending one is due. Drainers claim with `FOR UPDATE SKIP LOCKED` (xbot.outbox has the protocol).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, Field


class OutboxMessage(BaseModel):
    """A queued notification as the API shows it: its state, never the payload or the URL."""

    id: int
    kind: str
    reply_id: int
    status: Literal["pending", "sent", "failed"]
    attempts: int
    next_attempt_at: datetime | None = Field(description="When it is tried again (pending only)")
    last_error: str | None = Field(description="Why the last try did not deliver it")
    created_at: datetime
    sent_at: datetime | None


@dataclass(frozen=True)
class ClaimedMessage:
    """A due message, its row locked by the claiming transaction, with where the bot sends it."""

    id: int
    reply_id: int
    payload: dict[str, Any] = field(repr=False)
    attempts: int
    failures: int
    discord_webhook_url_enc: bytes | None = field(repr=False)
    discord_webhook_url: str | None = field(repr=False)  # an old row not encrypted yet


async def enqueue(
    db: asyncpg.Pool | asyncpg.Connection, bot_id: str, kind: str, reply_id: int, payload: dict[str, Any]
) -> bool:
    """Queue a message; False when (kind, reply) is already queued or the bot has no webhook."""
    queued = await db.fetchval(
        """
        INSERT INTO notification_outbox (bot_id, kind, reply_id, payload)
        SELECT b.id, $2, $3, $4 FROM bots b
        WHERE b.id = $1 AND (b.discord_webhook_url_enc IS NOT NULL OR b.discord_webhook_url IS NOT NULL)
        ON CONFLICT (kind, reply_id) DO NOTHING
        RETURNING id
        """,
        bot_id,
        kind,
        reply_id,
        payload,
    )
    return queued is not None


async def claim_next(conn: asyncpg.Connection, bot_id: str) -> ClaimedMessage | None:
    """The bot's oldest due message no other drainer holds, locked until the transaction ends."""
    row = await conn.fetchrow(
        """
        SELECT o.id, o.reply_id, o.payload, o.attempts, o.failures,
               b.discord_webhook_url_enc, b.discord_webhook_url
        FROM notification_outbox o
        JOIN bots b ON b.id = o.bot_id
        WHERE o.bot_id = $1 AND o.status = 'pending' AND o.next_attempt_at <= now()
        ORDER BY o.id
        LIMIT 1
        FOR UPDATE OF o SKIP LOCKED
        """,
        bot_id,
    )
    return ClaimedMessage(**dict(row)) if row is not None else None


async def seconds_to_next(db: asyncpg.Pool | asyncpg.Connection, bot_id: str) -> float | None:
    """Until the bot's next pending message no other drainer holds is due (negative: overdue)."""
    wait: float | None = await db.fetchval(
        "SELECT extract(epoch FROM next_attempt_at - clock_timestamp())::float8"
        " FROM notification_outbox WHERE bot_id = $1 AND status = 'pending'"
        " ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        bot_id,
    )
    return wait


async def mark_sent(conn: asyncpg.Connection, message_id: int, attempts: int) -> None:
    await conn.execute(
        "UPDATE notification_outbox SET status = 'sent', attempts = $2, sent_at = now(),"
        " last_error = NULL, updated_at = now() WHERE id = $1",
        message_id,
        attempts,
    )


async def mark_failed(
    conn: asyncpg.Connection, message_id: int, attempts: int, failures: int, error: str
) -> None:
    await conn.execute(
        "UPDATE notification_outbox SET status = 'failed', attempts = $2, failures = $3,"
        " last_error = $4, updated_at = now() WHERE id = $1",
        message_id,
        attempts,
        failures,
        error,
    )


async def schedule_retry(
    conn: asyncpg.Connection, message_id: int, attempts: int, failures: int, error: str, delay_seconds: float
) -> datetime:
    """Due again `delay_seconds` from now (not from the transaction's start); returns when."""
    retry_at: datetime = await conn.fetchval(
        "UPDATE notification_outbox SET attempts = $2, failures = $3, last_error = $4,"
        " next_attempt_at = clock_timestamp() + $5 * interval '1 second', updated_at = now()"
        " WHERE id = $1 RETURNING next_attempt_at",
        message_id,
        attempts,
        failures,
        error,
        delay_seconds,
    )
    return retry_at


async def hold_others_until(conn: asyncpg.Connection, bot_id: str, message_id: int, until: datetime) -> None:
    """The bot's other pending messages due earlier wait until `until` (those no drainer holds)."""
    await conn.execute(
        """
        UPDATE notification_outbox SET next_attempt_at = $3, updated_at = now()
        WHERE id IN (SELECT id FROM notification_outbox
                     WHERE bot_id = $1 AND status = 'pending' AND id <> $2 AND next_attempt_at < $3
                     FOR UPDATE SKIP LOCKED)
        """,
        bot_id,
        message_id,
        until,
    )


async def list_messages(
    db: asyncpg.Pool | asyncpg.Connection, bot_id: str, status: str | None, limit: int
) -> list[OutboxMessage]:
    """Newest first."""
    rows = await db.fetch(
        """
        SELECT id, kind, reply_id, status, attempts,
               CASE WHEN status = 'pending' THEN next_attempt_at END AS next_attempt_at,
               last_error, created_at, sent_at
        FROM notification_outbox
        WHERE bot_id = $1 AND ($2::text IS NULL OR status = $2)
        ORDER BY id DESC
        LIMIT $3
        """,
        bot_id,
        status,
        limit,
    )
    return [OutboxMessage.model_validate(dict(row)) for row in rows]
