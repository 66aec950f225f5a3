"""Rows of `oauth_connect_requests`: one pending "Connect X account" flow each (xbot.x.connect).

The row is keyed by the SHA-256 of the OAuth `state` (never the state itself), holds the PKCE code
verifier encrypted, and is single use: `take` deletes it whatever the callback does next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import asyncpg


@dataclass(frozen=True)
class ConnectRequest:
    bot_id: str
    code_verifier_enc: bytes = field(repr=False)
    redirect_uri: str
    live: bool  # not expired


async def add(
    conn: asyncpg.Connection,
    state_hash: bytes,
    bot_id: str,
    code_verifier_enc: bytes,
    redirect_uri: str,
    scopes: list[str],
    expires_at: datetime,
) -> None:
    """Store a new request, clearing those expired for more than a day, in one transaction."""
    async with conn.transaction():
        await conn.execute("DELETE FROM oauth_connect_requests WHERE expires_at < now() - interval '1 day'")
        await conn.execute(
            "INSERT INTO oauth_connect_requests (state_hash, bot_id, code_verifier_enc, redirect_uri,"
            " scopes, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
            state_hash,
            bot_id,
            code_verifier_enc,
            redirect_uri,
            " ".join(scopes),
            expires_at,
        )


async def take(db: asyncpg.Pool | asyncpg.Connection, state_hash: bytes) -> ConnectRequest | None:
    """Delete the request and return it; None: unknown or already used."""
    row = await db.fetchrow(
        "DELETE FROM oauth_connect_requests WHERE state_hash = $1"
        " RETURNING bot_id, code_verifier_enc, redirect_uri, expires_at > now() AS live",
        state_hash,
    )
    return ConnectRequest(**dict(row)) if row is not None else None
