"""Fixtures of the chaos suite: its own PostgreSQL and Temporal dev server (both restartable), a
fresh database per test, and the fleet of fakes (X accounts, LLM, Discord) on loopback.

`XBOT_CHAOS_SCALE` (default 1) scales every scenario; 1 is the bounded form CI runs.
`XBOT_CHAOS_SEED` fixes the random moments of the kills (default: a fixed seed, printed).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from tests.chaos.fleet import ChaosLlm, FleetX
from tests.chaos.infra import RestartableTemporal, StoppablePostgres, wait_for_postgres
from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.serve import serve
from xbot.storage.migrate import migrate
from xbot.storage.pool import create_pool


def chaos_scale() -> int:
    return max(1, int(os.environ.get("XBOT_CHAOS_SCALE", "1")))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Bigger scales run longer than pytest-timeout's default allows: give chaos tests room."""
    here = Path(__file__).parent
    if chaos_scale() > 1:
        for item in items:
            if here in item.path.parents:
                item.add_marker(pytest.mark.timeout(300 * chaos_scale()))


@pytest.fixture
def scale() -> int:
    return chaos_scale()


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    seed = int(os.environ.get("XBOT_CHAOS_SEED", "20261126"))
    print(f"chaos seed {seed} for {request.node.name}")
    return random.Random(f"{seed}-{request.node.name}")


@pytest.fixture(scope="session")
def chaos_root() -> Iterator[Path]:
    # Short path: PostgreSQL's Unix socket lives in its data directory (~100-byte limit).
    root = Path(tempfile.mkdtemp(prefix="xbchaos", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def chaos_postgres(chaos_root: Path) -> Iterator[StoppablePostgres]:
    """A PostgreSQL the outage test may stop; every chaos test keeps its own database on it."""
    server = StoppablePostgres(chaos_root / "pg")
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def chaos_temporal(chaos_root: Path) -> Iterator[RestartableTemporal]:
    """A dev server on a SQLite file, which the restart test stops and starts again."""
    server = RestartableTemporal(chaos_root)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


async def new_database(server: StoppablePostgres) -> str:
    """A fresh, migrated database on the chaos PostgreSQL (started again if a test left it down)."""
    if not server.running():
        server.start()
    await wait_for_postgres(server.url)
    name = f"chaos_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server.url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database(server.url, name)
    await migrate(url)
    return url


async def drop_database(server: StoppablePostgres, url: str) -> None:
    if not server.running():
        server.start()
    await wait_for_postgres(server.url)
    name = url.partition("?")[0].rsplit("/", 1)[1]
    admin = await asyncpg.connect(server.url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def chaos_database_url(chaos_postgres: StoppablePostgres) -> AsyncIterator[str]:
    """A fresh, migrated database on the chaos PostgreSQL, dropped afterwards."""
    url = await new_database(chaos_postgres)
    try:
        yield url
    finally:
        await drop_database(chaos_postgres, url)


@pytest.fixture
async def chaos_pool(chaos_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(chaos_database_url, min_size=1, max_size=10)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def chaos_client(chaos_temporal: RestartableTemporal) -> Client:
    return await Client.connect(chaos_temporal.address, data_converter=pydantic_data_converter)


@pytest.fixture
def chaos_queue() -> str:
    return f"chaos-{uuid.uuid4().hex[:10]}"


@dataclass
class Fakes:
    x: FleetX
    x_url: str
    llm: ChaosLlm
    llm_url: str
    discord: FakeDiscord
    discord_url: str
    client_id: str
    client_secret: str

    def webhook_url(self, token: str) -> str:
        return f"{self.discord_url}/api/webhooks/{uuid.uuid4().int % 10**18}/{token}"


@asynccontextmanager
async def serve_fakes() -> AsyncIterator[Fakes]:
    """X (many accounts), an OpenAI-compatible LLM and Discord, each a real server on 127.0.0.1."""
    client_id = "chaos-client-" + uuid.uuid4().hex[:8]
    client_secret = "cs_" + uuid.uuid4().hex + uuid.uuid4().hex[:8]
    x = FleetX(client_id, client_secret)
    llm, discord = ChaosLlm(), FakeDiscord()
    async with serve(x.app()) as x_url, serve(llm.app()) as llm_url, serve(discord.app()) as discord_url:
        yield Fakes(x, x_url, llm, f"{llm_url}/v1", discord, discord_url, client_id, client_secret)


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    async with serve_fakes() as served:
        yield served
