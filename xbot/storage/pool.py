"""PostgreSQL access: the embedded server for development, and asyncpg pools with JSON codecs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from xbot.settings import Settings

if TYPE_CHECKING:
    from xbot.localstack import EmbeddedPostgres

log = logging.getLogger(__name__)

# What a statement runs on: the pool, or a connection (inside a transaction).
Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection

# Held for the life of the process so the embedded server keeps running while we use it.
_embedded_servers: dict[Path, EmbeddedPostgres] = {}


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL under `data_dir/postgres` and return its URL."""
    from xbot.localstack import EmbeddedPostgres

    pgdata = (data_dir / "postgres").resolve()
    server = _embedded_servers.get(pgdata)
    if server is None:
        server = _embedded_servers[pgdata] = EmbeddedPostgres(pgdata, cleanup_mode="stop")
    return server.url


def stop_embedded_postgres() -> None:
    for server in _embedded_servers.values():
        server.cleanup()
    _embedded_servers.clear()


def resolve_database_url(settings: Settings) -> str:
    """`DATABASE_URL` when set, else the embedded server under the data directory."""
    if settings.database_url:
        return settings.database_url
    return start_embedded_postgres(settings.xbot_data_dir)


async def _init_connection(connection: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, command_timeout: float | None = 30
) -> asyncpg.Pool:
    """A pool whose statements time out after `command_timeout` seconds unless a call says otherwise."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, command_timeout=command_timeout
    )
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    connection = await asyncpg.connect(dsn)
    await _init_connection(connection)
    return connection


async def database_answers(pool: asyncpg.Pool) -> bool:
    """Whether the database runs a trivial query (the health check)."""
    return bool(await pool.fetchval("SELECT 1") == 1)
