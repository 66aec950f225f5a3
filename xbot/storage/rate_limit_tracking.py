"""Rows of `rate_limit_tracking`: each bot's own window per endpoint (`x-rate-limit-*`, else the
plan's static limit), with the slots reserved in it and the X app (`app_key`) it last spoke through.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

import asyncpg

from xbot.storage.quota_windows import freed_reserved

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True)
class EndpointWindowRow:
    endpoint: str
    limit_total: int
    remaining: int
    reset_at: datetime
    reserved: int
    reserved_until: datetime | None


_COLUMNS = "endpoint, limit_total, remaining, reset_at, reserved, reserved_until"


async def lock(
    conn: asyncpg.Connection,
    bot_id: str,
    endpoint: str,
    static_limit: int,
    static_reset_at: datetime,
    app: str,
) -> EndpointWindowRow:
    """Create (full, with the static limit) or touch the row, locking it until the transaction ends:
    reservations of this bot and endpoint queue here. Records the bot's app as well."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO rate_limit_tracking AS t (bot_id, endpoint, limit_total, remaining, reset_at, app_key)
        VALUES ($1, $2, $3, $3, $4, $5)
        ON CONFLICT (bot_id, endpoint) DO UPDATE SET app_key = EXCLUDED.app_key
        RETURNING {_COLUMNS}
        """,
        bot_id,
        endpoint,
        static_limit,
        static_reset_at,
        app,
    )
    assert row is not None
    return EndpointWindowRow(**dict(row))


async def hold_slot(
    conn: asyncpg.Connection,
    bot_id: str,
    endpoint: str,
    remaining: int,
    reset_at: datetime,
    reserved: int,
    reserved_until: datetime,
) -> None:
    await conn.execute(
        "UPDATE rate_limit_tracking SET remaining = $3, reset_at = $4, reserved = $5,"
        " reserved_until = $6, updated_at = now() WHERE bot_id = $1 AND endpoint = $2",
        bot_id,
        endpoint,
        remaining,
        reset_at,
        reserved,
        reserved_until,
    )


async def free_slot(conn: asyncpg.Connection, bot_id: str, endpoint: str, now: datetime) -> None:
    await conn.execute(
        f"UPDATE rate_limit_tracking SET reserved = {freed_reserved('$3')} WHERE bot_id = $1 AND endpoint = $2",
        bot_id,
        endpoint,
        now,
    )


async def settle(
    conn: asyncpg.Connection,
    bot_id: str,
    endpoint: str,
    reported: tuple[int, int, datetime] | None,
    now: datetime,
    fresh_reset_at: datetime,
) -> None:
    """Free the request's slot and count it: X's (limit, remaining, reset) when it said them (two
    answers for the same window keep the lower count), else one request less (a window past its
    reset starts again, full, until `fresh_reset_at`)."""
    await conn.execute(
        f"""
        UPDATE rate_limit_tracking SET
            limit_total = coalesce($3, limit_total),
            remaining = CASE
                WHEN $4::integer IS NOT NULL AND reset_at = $5 THEN least(remaining, $4)
                WHEN $4::integer IS NOT NULL THEN $4
                WHEN reset_at > $6 THEN greatest(remaining - 1, 0)
                ELSE greatest(limit_total - 1, 0) END,
            reset_at = CASE
                WHEN $4::integer IS NOT NULL THEN $5
                WHEN reset_at > $6 THEN reset_at
                ELSE $7 END,
            reserved = {freed_reserved("$6")},
            updated_at = now()
        WHERE bot_id = $1 AND endpoint = $2
        """,
        bot_id,
        endpoint,
        reported[0] if reported else None,
        reported[1] if reported else None,
        reported[2] if reported else None,
        now,
        fresh_reset_at,
    )


async def find(db: Db, bot_id: str, endpoint: str) -> EndpointWindowRow | None:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM rate_limit_tracking WHERE bot_id = $1 AND endpoint = $2", bot_id, endpoint
    )
    return EndpointWindowRow(**dict(row)) if row is not None else None


async def of_bot(db: Db, bot_id: str) -> list[EndpointWindowRow]:
    rows = await db.fetch(f"SELECT {_COLUMNS} FROM rate_limit_tracking WHERE bot_id = $1", bot_id)
    return [EndpointWindowRow(**dict(row)) for row in rows]
