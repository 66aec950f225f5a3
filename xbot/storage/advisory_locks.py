"""PostgreSQL session advisory locks: held by one connection, freed when it ends (a process that dies
mid-run frees its locks).

Tasks are kept apart by two-key locks (namespace, hashtext(name)); the migration lock and the named
locks below use the one-key form, so they never meet. A lock lives as long as the
session holds it: the callers keep one connection for the whole run.
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg

BOT_LOCK_NAMESPACE = 0x78620001  # one running task per bot (the pre-v2 scheduler)
KEY_LOCK_NAMESPACE = 0x78620002  # a definition's `lock_key`


async def try_lock(connection: asyncpg.Connection, namespace: int, name: str) -> bool:
    """Take the lock if it is free; whether it was."""
    return bool(await connection.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", namespace, name))


async def lock(connection: asyncpg.Connection, namespace: int, name: str) -> None:
    """Wait as long as it takes for the lock."""
    await connection.execute("SELECT pg_advisory_lock($1, hashtext($2))", namespace, name)


async def lock_within(connection: asyncpg.Connection, namespace: int, name: str, timeout: timedelta) -> bool:
    """Wait at most `timeout` (the session's lock_timeout) for the lock; False when it ran out.

    Any other error leaves the session in an unknown state: the caller ends the connection.
    """
    try:
        await connection.execute(f"SET lock_timeout = {int(timeout.total_seconds() * 1000)}")
        await connection.execute(
            "SELECT pg_advisory_lock($1, hashtext($2))", namespace, name, timeout=timeout.total_seconds() + 10
        )
        await connection.execute("SET lock_timeout = 0")
    except asyncpg.exceptions.LockNotAvailableError:
        await connection.execute("SET lock_timeout = 0")
        return False
    return True


async def unlock_all(connection: asyncpg.Connection) -> None:
    await connection.execute("SELECT pg_advisory_unlock_all()")


async def try_lock_named(connection: asyncpg.Connection, name: str) -> bool:
    """A one-key lock named by a string: take it now if nobody holds it; False otherwise (never waits)."""
    return bool(await connection.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", name))


async def unlock_named(connection: asyncpg.Connection, name: str) -> None:
    await connection.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", name)
