"""Databases for tests: one per test, created on a shared server and dropped afterwards.

Migrating a database takes longer than copying one, so a session migrates a template once and every
test's database is a copy of it (`CREATE DATABASE ... TEMPLATE`). The copy for the next test is made
while the current one runs, and used databases are dropped in the background.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit

import asyncpg

from xbot.localstack import with_database

T = TypeVar("T")


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


async def _in_background(operation: Callable[[], Awaitable[T]]) -> T:
    """Run a copy or drop begun in the background; asyncpg times its connect in loop time, which
    runs on while the loop sits idle between tests (a synchronous test may take minutes), so a
    timeout there is not the server's: try again."""
    for attempt in range(3):
        try:
            return await operation()
        except TimeoutError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class DatabaseSupply:
    """Copies of one template database, made ahead, so that a test seldom waits for its copy (a copy
    takes ~0.1 s on a quiet machine, ~0.5 s beside a running test)."""

    def __init__(self, server_url: str, template: str, ahead: int = 2) -> None:
        self.server_url = server_url
        self.template = template
        self.ahead = ahead
        self._ready: list[asyncio.Task[str]] = []
        self._drops: list[asyncio.Task[None]] = []

    async def take(self) -> str:
        """A fresh copy (its URL); starts making the next ones."""
        while len(self._ready) < self.ahead + 1:
            copy = functools.partial(create_database, self.server_url, template=self.template)
            self._ready.append(asyncio.ensure_future(_in_background(copy)))
        return await self._ready.pop(0)

    def give_back(self, url: str) -> None:
        """Drop the database in the background: its test is done with it."""
        drop = functools.partial(drop_database, self.server_url, url)
        self._drops.append(asyncio.ensure_future(_in_background(drop)))

    async def close(self) -> None:
        for ready in self._ready:
            self.give_back(await ready)
        self._ready.clear()
        await asyncio.gather(*self._drops)
