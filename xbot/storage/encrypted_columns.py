"""Every column encrypted with TOKEN_ENCRYPTION_KEY, and the generic statements that read and rewrite
them one row at a time (`xbot reencrypt-tokens`, xbot.crypto.reencrypt).

The statements are built from the list below, whose names are checked to be plain identifiers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class EncryptedColumns:
    """Columns (bytea, or text holding a Fernet token) of one table encrypted with the token key ring."""

    table: str
    key: str
    columns: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in (self.table, self.key, *self.columns):
            if not _IDENTIFIER.match(name):
                raise ValueError(f"not a plain SQL identifier: {name!r}")


# Everything encrypted with TOKEN_ENCRYPTION_KEY; a new encrypted column is one more line here.
ENCRYPTED: tuple[EncryptedColumns, ...] = (
    EncryptedColumns("bot_tokens", "bot_id", ("access_token_enc", "refresh_token_enc")),
    EncryptedColumns("bots", "id", ("llm_api_key_enc", "discord_webhook_url_enc")),
    EncryptedColumns("llm_configs", "id", ("api_key_enc",)),
    # PKCE code verifiers of authorizations under way (10 minutes each).
    EncryptedColumns("oauth_connect_requests", "state_hash", ("code_verifier_enc",)),
)


async def keys_after(
    db: asyncpg.Pool | asyncpg.Connection, target: EncryptedColumns, last: Any, limit: int
) -> list[Any]:
    """A keyset page of the table's keys: the first `limit` after `last` (None: from the start)."""
    if last is None:
        rows = await db.fetch(
            f"SELECT {target.key} FROM {target.table} ORDER BY {target.key} LIMIT $1", limit
        )
    else:
        rows = await db.fetch(
            f"SELECT {target.key} FROM {target.table} WHERE {target.key} > $1 ORDER BY {target.key} LIMIT $2",
            last,
            limit,
        )
    return [row[0] for row in rows]


async def lock_values(conn: asyncpg.Connection, target: EncryptedColumns, key: Any) -> dict[str, Any] | None:
    """The row's encrypted values by column, the row locked until the transaction ends; None: gone."""
    row = await conn.fetchrow(
        f"SELECT {', '.join(target.columns)} FROM {target.table} WHERE {target.key} = $1 FOR UPDATE", key
    )
    return dict(row) if row is not None else None


async def write_values(
    conn: asyncpg.Connection, target: EncryptedColumns, key: Any, values: Mapping[str, bytes | str]
) -> None:
    """Replace some of the row's encrypted values (names from `target.columns`)."""
    unknown = set(values) - set(target.columns)
    if unknown:
        raise ValueError(f"not an encrypted column of {target.table}: {sorted(unknown)}")
    assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(values, start=2))
    await conn.execute(
        f"UPDATE {target.table} SET {assignments} WHERE {target.key} = $1", key, *values.values()
    )
