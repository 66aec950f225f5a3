"""Rows of `quota_windows`: the quota ledger's windows beyond a bot's endpoint window.

One row per (scope, owner, endpoint, window_kind): `owner` is the bot id (scope `bot`) or the X
app's key (scope `app`, shared by every bot of the app). `reserved` counts slots taken by requests
not settled yet; it stops counting at `reserved_until`. Every transaction locks ledger rows in the
order `scope, owner, window_kind` (xbot.x.quota has the protocol).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeAlias

import asyncpg

Scope = Literal["bot", "app"]
WindowKind = Literal["15m", "24h", "month"]
# Where a window's numbers come from: X's headers, X's usage-capped problem, or a bare 429.
Source = Literal["x-rate-limit", "x-user-limit-24hour", "x-app-limit-24hour", "usage-capped", "429"]
# A ledger row of one endpoint: (scope, owner, window_kind).
LedgerKey: TypeAlias = tuple[Scope, str, WindowKind]
Db: TypeAlias = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True)
class LedgerRow:
    scope: Scope
    owner: str
    endpoint: str
    window_kind: WindowKind
    limit_total: int | None  # None when X did not say
    remaining: int
    reset_at: datetime
    reserved: int
    reserved_until: datetime | None
    reason: str | None
    source: Source

    @property
    def key(self) -> LedgerKey:
        return self.scope, self.owner, self.window_kind


_COLUMNS = (
    "scope, owner, endpoint, window_kind, limit_total, remaining, reset_at, reserved, reserved_until, reason,"
    " source"
)
_KEY = "scope = $1 AND owner = $2 AND endpoint = $3 AND window_kind = $4"


def freed_reserved(now_param: str, *, held: bool = True, alias: str = "") -> str:
    """SQL for `reserved` once this request's slot is freed. A counter past its lease is stale: the
    slots it counted belong to requests that ended long ago (a dead worker), so it starts from zero."""
    column, until = f"{alias}reserved", f"{alias}reserved_until"
    kept = f"greatest({column} - 1, 0)" if held else column
    return f"CASE WHEN {until} > {now_param} THEN {kept} ELSE 0 END"


def _rows(records: list[asyncpg.Record]) -> list[LedgerRow]:
    return [LedgerRow(**dict(record)) for record in records]


async def lock_live(
    conn: asyncpg.Connection, bot_id: str, app: str, endpoint: str, now: datetime
) -> list[LedgerRow]:
    """The bot's and the app's unexpired windows of `endpoint`, locked in the ledger's order."""
    return _rows(
        await conn.fetch(
            f"""
            SELECT {_COLUMNS}
            FROM quota_windows
            WHERE endpoint = $3 AND reset_at > $4
              AND ((scope = 'bot' AND owner = $1) OR (scope = 'app' AND owner = $2))
            ORDER BY scope, owner, array_position(ARRAY['15m', '24h', 'month'], window_kind)
            FOR UPDATE
            """,
            bot_id,
            app,
            endpoint,
            now,
        )
    )


async def hold_slot(
    conn: asyncpg.Connection, row: LedgerRow, reserved: int, reserved_until: datetime
) -> None:
    await conn.execute(
        f"UPDATE quota_windows SET reserved = $5, reserved_until = $6, updated_at = now() WHERE {_KEY}",
        *_key_args(row.key, row.endpoint),
        reserved,
        reserved_until,
    )


def _key_args(key: LedgerKey, endpoint: str) -> tuple[str, str, str, str]:
    """The arguments $1-$4 of `_KEY`."""
    scope, owner, kind = key
    return scope, owner, endpoint, kind


async def free_slot(conn: asyncpg.Connection, key: LedgerKey, endpoint: str, now: datetime) -> None:
    await conn.execute(
        f"UPDATE quota_windows SET reserved = {freed_reserved('$5')} WHERE {_KEY}",
        *_key_args(key, endpoint),
        now,
    )


async def count_request(
    conn: asyncpg.Connection, key: LedgerKey, endpoint: str, now: datetime, *, held: bool
) -> None:
    """X did not describe this window: count the request ourselves (and free its slot if `held`)."""
    await conn.execute(
        "UPDATE quota_windows SET remaining = greatest(remaining - 1, 0),"
        f" reserved = {freed_reserved('$5', held=held)}, updated_at = now() WHERE {_KEY}",
        *_key_args(key, endpoint),
        now,
    )


async def record_reading(
    conn: asyncpg.Connection,
    key: LedgerKey,
    endpoint: str,
    now: datetime,
    *,
    limit: int | None,
    remaining: int,
    reset_at: datetime,
    reason: str | None,
    source: Source,
    bot_id: str | None,
    held: bool,
) -> None:
    """What X said about the window replaces ours (two answers for one window keep the lower
    count); frees the request's slot if `held`."""
    await conn.execute(
        f"""
        INSERT INTO quota_windows AS w
            (scope, owner, endpoint, window_kind, limit_total, remaining, reset_at, reason, bot_id, source)
        VALUES ($1, $2, $3, $4, $6, $7, $8, $9, $10, $11)
        ON CONFLICT (scope, owner, endpoint, window_kind) DO UPDATE SET
            limit_total = coalesce(EXCLUDED.limit_total, w.limit_total),
            remaining = CASE WHEN w.reset_at = EXCLUDED.reset_at THEN least(w.remaining, EXCLUDED.remaining)
                             ELSE EXCLUDED.remaining END,
            reset_at = EXCLUDED.reset_at,
            reason = EXCLUDED.reason,
            source = EXCLUDED.source,
            reserved = {freed_reserved("$5", held=held, alias="w.")},
            updated_at = now()
        """,
        *_key_args(key, endpoint),
        now,
        limit,
        remaining,
        reset_at,
        reason,
        bot_id,
        source,
    )


# The bot's own rows and those of every app it has spoken through (`rate_limit_tracking.app_key`).
_OF_BOT = f"""
SELECT {_COLUMNS}
FROM quota_windows
WHERE ((scope = 'bot' AND owner = $1)
       OR (scope = 'app' AND owner IN (SELECT app_key FROM rate_limit_tracking WHERE bot_id = $1)))
"""
# The same, plus the windows of the app `$2` (the one configured here), even before the bot's first request.
_OF_BOT_AND_APP = f"""
SELECT {_COLUMNS}
FROM quota_windows
WHERE ((scope = 'bot' AND owner = $1)
       OR (scope = 'app' AND (owner = $2
                              OR owner IN (SELECT app_key FROM rate_limit_tracking WHERE bot_id = $1))))
"""


async def live_of_bot(db: Db, bot_id: str, endpoint: str, now: datetime) -> list[LedgerRow]:
    """The unexpired windows binding the bot's requests to `endpoint`."""
    return _rows(
        await db.fetch(
            f"{_OF_BOT} AND endpoint = $2 AND reset_at > $3 ORDER BY scope, window_kind",
            bot_id,
            endpoint,
            now,
        )
    )


async def of_bot(db: Db, bot_id: str, app: str | None = None) -> list[LedgerRow]:
    """Every row binding the bot, expired ones included; with `app`, that app's rows too."""
    if app is not None:
        return _rows(await db.fetch(_OF_BOT_AND_APP, bot_id, app))
    return _rows(await db.fetch(_OF_BOT, bot_id))
