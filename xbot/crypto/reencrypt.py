"""`xbot reencrypt-tokens`: rewrite every value encrypted with TOKEN_ENCRYPTION_KEY under its first key.

Run it after putting a new key first (`NEW,OLD`) on every process; afterwards the old key can go. Each
row is re-encrypted in its own short transaction under its row lock, so a concurrent token refresh either
runs before (and is re-encrypted) or after (and writes under the first key already). Values already under
the first key are left alone: running it twice changes nothing the second time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import asyncpg

from xbot.crypto.at_rest import TokenCipher, TokenCipherError

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


@dataclass
class Counts:
    """Rows, never values."""

    reencrypted: int = 0
    current: int = 0
    unreadable: int = 0

    def line(self, table: str) -> str:
        return (
            f"{table}: {self.reencrypted} re-encrypted, {self.current} already under the first key,"
            f" {self.unreadable} unreadable"
        )


async def reencrypt_all(
    pool: asyncpg.Pool,
    cipher: TokenCipher,
    *,
    batch_size: int = 100,
    targets: tuple[EncryptedColumns, ...] = ENCRYPTED,
) -> dict[str, Counts]:
    return {target.table: await reencrypt_table(pool, cipher, target, batch_size) for target in targets}


async def reencrypt_table(
    pool: asyncpg.Pool, cipher: TokenCipher, target: EncryptedColumns, batch_size: int
) -> Counts:
    counts = Counts()
    last: Any = None
    while True:
        # Keyset pages: rows added meanwhile are either seen or were written under the first key.
        if last is None:
            keys = await pool.fetch(
                f"SELECT {target.key} FROM {target.table} ORDER BY {target.key} LIMIT $1", batch_size
            )
        else:
            keys = await pool.fetch(
                f"SELECT {target.key} FROM {target.table} WHERE {target.key} > $1"
                f" ORDER BY {target.key} LIMIT $2",
                last,
                batch_size,
            )
        for record in keys:
            outcome = await _reencrypt_row(pool, cipher, target, record[0])
            setattr(counts, outcome, getattr(counts, outcome) + 1)
        if len(keys) < batch_size:
            return counts
        last = keys[-1][0]


async def _reencrypt_row(pool: asyncpg.Pool, cipher: TokenCipher, target: EncryptedColumns, key: Any) -> str:
    columns = ", ".join(target.columns)
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"SELECT {columns} FROM {target.table} WHERE {target.key} = $1 FOR UPDATE", key
        )
        if row is None:
            return "current"  # deleted meanwhile: nothing left under the old key
        changes: dict[str, bytes | str] = {}
        unreadable = False
        for column in target.columns:
            value = row[column]
            if value is None:
                continue
            raw = value.encode() if isinstance(value, str) else bytes(value)
            if cipher.is_current(raw):
                continue
            try:
                rotated = cipher.rotate(raw)
            except TokenCipherError:
                unreadable = True
                continue
            changes[column] = rotated.decode() if isinstance(value, str) else rotated
        if changes:
            assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(changes, start=2))
            await conn.execute(
                f"UPDATE {target.table} SET {assignments} WHERE {target.key} = $1", key, *changes.values()
            )
    if unreadable:
        return "unreadable"
    return "reencrypted" if changes else "current"
