"""Handlers against real loopback servers: the fake X API, an OpenAI-compatible LLM, Discord."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from activities.handlers.base import HandlerDeps, TaskContext
from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_llm import API_KEY, FakeLlm
from tests.fakes.fake_x import CLIENT_ID, CLIENT_SECRET, FakeX
from tests.support.factories import insert_connected_bot
from tests.support.servers import serve_fakes
from xbot.crypto.at_rest import TokenCipher, cipher_from_settings
from xbot.settings import Settings, load_settings

# Client timeout in the tests; the fake's "hang" fault outlasts it.
X_TIMEOUT_SECONDS = 1.5


@dataclass
class World:
    pool: asyncpg.Pool
    settings: Settings
    http: httpx.AsyncClient
    x: FakeX
    llm: FakeLlm
    discord: FakeDiscord
    discord_url: str
    cipher: TokenCipher

    @property
    def deps(self) -> HandlerDeps:
        return HandlerDeps(pool=self.pool, settings=self.settings, http=self.http)

    async def add_bot(
        self, bot_id: str = "bot-1", *, expires_in: timedelta = timedelta(hours=2), **columns: Any
    ) -> str:
        """A pro-tier bot with a fresh token pair from the fake X (webhook URL and key encrypted)."""
        return await insert_connected_bot(
            self.pool, self.cipher, self.x, bot_id, expires_in=expires_in, **columns
        )

    def ctx(self, bot_id: str, task_type: str, **config: Any) -> TaskContext:
        return TaskContext(
            bot_id=bot_id,
            task_id=1,
            task_type=task_type,
            config=config,
            due_at=datetime.now(UTC),
            attempt=1,
            execution_id=0,
        )


def make_settings(x_url: str, llm_url: str) -> Settings:
    return load_settings(
        XBOT_ENV="test",
        X_API_BASE_URL=x_url,
        X_CLIENT_ID=CLIENT_ID,
        X_CLIENT_SECRET=CLIENT_SECRET,
        X_REQUEST_TIMEOUT_SECONDS=X_TIMEOUT_SECONDS,
        OPENAI_BASE_URL=f"{llm_url}/v1",
        OPENAI_API_KEY=API_KEY,
        OPENAI_MODEL="fake-model",
    )


@pytest.fixture
async def world(pool: asyncpg.Pool) -> AsyncIterator[World]:
    x, llm, discord = FakeX(), FakeLlm(), FakeDiscord()
    async with serve_fakes(x, llm, discord) as urls, httpx.AsyncClient() as http:
        settings = make_settings(urls.x, urls.llm)
        yield World(
            pool=pool,
            settings=settings,
            http=http,
            x=x,
            llm=llm,
            discord=discord,
            discord_url=f"{urls.discord}/api/webhooks/42/webhook-secret",
            cipher=cipher_from_settings(settings),
        )
