"""PostgreSQL session advisory locks named by a string: held by one connection, released by
PostgreSQL when that connection ends (a process that dies mid-run frees its locks)."""

from __future__ import annotations

import asyncpg


async def try_lock(conn: asyncpg.Connection, name: str) -> bool:
    """Take the lock now if nobody holds it; False otherwise (never waits)."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", name))


async def unlock(conn: asyncpg.Connection, name: str) -> None:
    await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", name)
