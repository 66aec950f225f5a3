"""Databases for tests: one per test, created on a shared server and dropped afterwards.

Migrating a database takes longer than copying one, so a session migrates a template once and every
test's database is a copy of it (`CREATE DATABASE ... TEMPLATE`). The copy for the next test is made
while the current one runs, and used databases are dropped in the background.
"""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg


def with_database(url: str, database: str) -> str:
    """The same server URL (query included: the embedded server's socket) pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


async def create_database(server_url: str, prefix: str = "xbot_test", template: str | None = None) -> str:
    """A new database on the server (empty, or a copy of `template`); returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    statement = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
    admin = await asyncpg.connect(server_url)
    try:
        for attempt in range(50):
            try:
                await admin.execute(statement)
                break
            except asyncpg.ObjectInUseError:
                # The template's last session (the migration's) may still be closing on the server.
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)
    finally:
        await admin.close()
    return with_database(server_url, name)


async def drop_database(server_url: str, url: str) -> None:
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database_name(url)}" WITH (FORCE)')
    finally:
        await admin.close()


class DatabaseSupply:
    """Copies of one template database, one made ahead, so that a test does not wait for its copy."""

    def __init__(self, server_url: str, template: str) -> None:
        self.server_url = server_url
        self.template = template
        self._next: asyncio.Task[str] | None = None
        self._drops: list[asyncio.Task[None]] = []

    def _copy(self) -> asyncio.Task[str]:
        return asyncio.ensure_future(create_database(self.server_url, template=self.template))

    async def take(self) -> str:
        """A fresh copy (its URL); starts making the next one."""
        ready = self._next or self._copy()
        self._next = self._copy()
        return await ready

    def give_back(self, url: str) -> None:
        """Drop the database in the background: its test is done with it."""
        self._drops.append(asyncio.ensure_future(drop_database(self.server_url, url)))

    async def close(self) -> None:
        if self._next is not None:
            self.give_back(await self._next)
        await asyncio.gather(*self._drops)
