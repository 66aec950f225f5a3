"""Rows of `bot_tokens`: each bot's encrypted OAuth pair and the state of its refresh.

The values are Fernet ciphertexts (xbot.crypto.at_rest); this module never sees a token in clear.
`version` counts the pairs stored; a refresh claims the row (`refresh_state = 'in_flight'`, a
`refresh_claim` id and a lease) before calling X. The protocol is in xbot.x.token_store.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeAlias

import asyncpg

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True)
class EncryptedPair:
    """A token pair as stored: encrypted, with what X said about it."""

    access_token_enc: bytes = field(repr=False)
    refresh_token_enc: bytes | None = field(repr=False)  # None: X issued none (a refresh keeps the old)
    expires_at: datetime | None
    scope: str | None

    def values(self) -> tuple[bytes, bytes | None, datetime | None, str | None]:
        return self.access_token_enc, self.refresh_token_enc, self.expires_at, self.scope


@dataclass(frozen=True)
class TokenUse:
    """What a request needs to use the bot's token: the bot's `auth_state`, and the pair if any."""

    auth_state: str
    access_token_enc: bytes | None = field(repr=False)
    version: int | None
    expires_at: datetime | None
    refresh_note: str | None


@dataclass(frozen=True)
class RefreshState:
    """The locked row a refresh decides on (`lock_for_refresh`)."""

    access_token_enc: bytes = field(repr=False)
    refresh_token_enc: bytes | None = field(repr=False)
    version: int
    expires_at: datetime | None
    refresh_state: str  # 'idle', 'in_flight' or 'answer_lost'
    refresh_note: str | None
    leased: bool  # an unexpired lease
    auth_state: str  # the bot's


@dataclass(frozen=True)
class StoredPair:
    access_token_enc: bytes = field(repr=False)
    version: int
    expires_at: datetime | None
    refresh_claim: uuid.UUID | None


async def store_pair(conn: asyncpg.Connection, bot_id: str, pair: EncryptedPair) -> int:
    """An operator's new pair replaces whatever a refresh was doing (its lease and notes go too);
    returns the new version."""
    version: int = await conn.fetchval(
        """
        INSERT INTO bot_tokens (bot_id, access_token_enc, refresh_token_enc, expires_at, scope)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (bot_id) DO UPDATE
        SET access_token_enc = EXCLUDED.access_token_enc,
            refresh_token_enc = EXCLUDED.refresh_token_enc,
            expires_at = EXCLUDED.expires_at, scope = EXCLUDED.scope,
            version = bot_tokens.version + 1, updated_at = now(),
            refresh_state = 'idle', refresh_claim = NULL, refresh_lease_until = NULL,
            refresh_note = NULL
        RETURNING version
        """,
        bot_id,
        *pair.values(),
    )
    return version


async def token_use(db: Db, bot_id: str) -> TokenUse | None:
    """None: the bot does not exist. A bot without tokens has a `TokenUse` with no pair."""
    row = await db.fetchrow(
        "SELECT b.auth_state, t.access_token_enc, t.version, t.expires_at, t.refresh_note"
        " FROM bots b LEFT JOIN bot_tokens t ON t.bot_id = b.id WHERE b.id = $1",
        bot_id,
    )
    return TokenUse(**dict(row)) if row is not None else None


async def lock_for_refresh(conn: asyncpg.Connection, bot_id: str) -> RefreshState | None:
    """Lock the bot's row until the caller's transaction ends; None: no tokens stored."""
    row = await conn.fetchrow(
        """
        SELECT t.access_token_enc, t.refresh_token_enc, t.version, t.expires_at,
               t.refresh_state, t.refresh_note, coalesce(t.refresh_lease_until > now(), false) AS leased,
               b.auth_state
        FROM bot_tokens t JOIN bots b ON b.id = t.bot_id
        WHERE t.bot_id = $1 FOR UPDATE OF t
        """,
        bot_id,
    )
    return RefreshState(**dict(row)) if row is not None else None


async def take_lease(
    conn: asyncpg.Connection, bot_id: str, claim_id: uuid.UUID, lease_seconds: float
) -> None:
    await conn.execute(
        """
        UPDATE bot_tokens
        SET refresh_state = 'in_flight', refresh_claim = $2,
            refresh_lease_until = now() + make_interval(secs => $3)
        WHERE bot_id = $1
        """,
        bot_id,
        claim_id,
        lease_seconds,
    )


async def save_refreshed_pair(
    conn: asyncpg.Connection, bot_id: str, pair: EncryptedPair, claim_id: uuid.UUID, base_version: int
) -> int | None:
    """The new version; None when the stored pair is no longer `base_version` (an operator's pair
    stored meanwhile is newer than ours, or an earlier try committed)."""
    version: int | None = await conn.fetchval(
        """
        UPDATE bot_tokens
        SET access_token_enc = $2, refresh_token_enc = coalesce($3, refresh_token_enc),
            expires_at = $4, scope = coalesce($5, scope), version = version + 1,
            refresh_state = 'idle', refresh_claim = $6, refresh_lease_until = NULL,
            refresh_note = NULL, updated_at = now()
        WHERE bot_id = $1 AND version = $7
        RETURNING version
        """,
        bot_id,
        *pair.values(),
        claim_id,
        base_version,
    )
    return version


async def stored_pair(conn: asyncpg.Connection, bot_id: str) -> StoredPair | None:
    row = await conn.fetchrow(
        "SELECT access_token_enc, version, expires_at, refresh_claim FROM bot_tokens WHERE bot_id = $1",
        bot_id,
    )
    return StoredPair(**dict(row)) if row is not None else None


async def release_claim(db: Db, bot_id: str, claim_id: uuid.UUID, *, after_lost_answer: bool) -> None:
    """X did not rotate: hand the claim back (an earlier lost answer stays on record)."""
    await db.execute(
        """
        UPDATE bot_tokens
        SET refresh_state = CASE WHEN $3 THEN 'answer_lost' ELSE 'idle' END,
            refresh_lease_until = NULL
        WHERE bot_id = $1 AND refresh_claim = $2 AND refresh_state = 'in_flight'
        """,
        bot_id,
        claim_id,
        after_lost_answer,
    )


async def record_answer_lost(conn: asyncpg.Connection, bot_id: str, claim_id: uuid.UUID, note: str) -> bool:
    """True when the claim was still in flight (and is now `answer_lost`)."""
    updated = await conn.fetchval(
        """
        UPDATE bot_tokens
        SET refresh_state = 'answer_lost', refresh_lease_until = NULL, refresh_note = $3
        WHERE bot_id = $1 AND refresh_claim = $2 AND refresh_state = 'in_flight'
        RETURNING 1
        """,
        bot_id,
        claim_id,
        note,
    )
    return bool(updated)


async def end_claim(conn: asyncpg.Connection, bot_id: str, claim_id: uuid.UUID) -> None:
    await conn.execute(
        """
        UPDATE bot_tokens SET refresh_state = 'idle', refresh_lease_until = NULL
        WHERE bot_id = $1 AND refresh_claim = $2
        """,
        bot_id,
        claim_id,
    )


async def set_refresh_note(db: Db, bot_id: str, note: str) -> None:
    await db.execute("UPDATE bot_tokens SET refresh_note = $2 WHERE bot_id = $1", bot_id, note)
