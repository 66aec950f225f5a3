"""`xbot reencrypt-tokens`: rewrite every value encrypted with TOKEN_ENCRYPTION_KEY under its first key.

Run it after putting a new key first (`NEW,OLD`) on every process; afterwards the old key can go. Each
row is re-encrypted in its own short transaction under its row lock, so a concurrent token refresh either
runs before (and is re-encrypted) or after (and writes under the first key already). Values already under
the first key are left alone: running it twice changes nothing the second time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from xbot.crypto.at_rest import TokenCipher, TokenCipherError
from xbot.storage.encrypted_columns import ENCRYPTED, EncryptedColumns, keys_after, lock_values, write_values

__all__ = ["ENCRYPTED", "Counts", "EncryptedColumns", "reencrypt_all", "reencrypt_table"]


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
        keys = await keys_after(pool, target, last, batch_size)
        for key in keys:
            outcome = await _reencrypt_row(pool, cipher, target, key)
            setattr(counts, outcome, getattr(counts, outcome) + 1)
        if len(keys) < batch_size:
            return counts
        last = keys[-1]


async def _reencrypt_row(pool: asyncpg.Pool, cipher: TokenCipher, target: EncryptedColumns, key: Any) -> str:
    async with pool.acquire() as conn, conn.transaction():
        row = await lock_values(conn, target, key)
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
            await write_values(conn, target, key, changes)
    if unreadable:
        return "unreadable"
    return "reencrypted" if changes else "current"
