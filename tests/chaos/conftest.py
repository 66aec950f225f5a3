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
from tests.support.database import create_database, drop_database
from tests.support.servers import serve_fakes as serve_fake_apps
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


async def running_server(server: StoppablePostgres) -> str:
    """The chaos PostgreSQL's URL, started again if a test left it down."""
    if not server.running():
        server.start()
    await wait_for_postgres(server.url)
    return server.url


async def new_database(server: StoppablePostgres) -> str:
    """A fresh, migrated database on the chaos PostgreSQL."""
    url = await create_database(await running_server(server), prefix="chaos")
    await migrate(url)
    return url


@pytest.fixture
async def chaos_database_url(chaos_postgres: StoppablePostgres) -> AsyncIterator[str]:
    """A fresh, migrated database on the chaos PostgreSQL, dropped afterwards."""
    url = await new_database(chaos_postgres)
    try:
        yield url
    finally:
        await drop_database(await running_server(chaos_postgres), url)


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
    async with serve_fake_apps(x, llm, discord) as urls:
        yield Fakes(x, urls.x, llm, f"{urls.llm}/v1", discord, urls.discord, client_id, client_secret)


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    async with serve_fakes() as served:
        yield served
