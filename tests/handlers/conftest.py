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
from tests.fakes.serve import serve
from xbot.bots import webhook_url_columns
from xbot.crypto.at_rest import TokenCipher, cipher_from_settings
from xbot.settings import Settings, load_settings
from xbot.x.tokens import store_tokens

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
        if "discord_webhook_url" in columns:  # stored encrypted, as the API stores it
            columns.update(webhook_url_columns(columns.pop("discord_webhook_url"), self.cipher))
        values = {"name": f"Bot {bot_id}", "plan_tier": "pro", **columns}
        names = ", ".join(["id", *values])
        marks = ", ".join(f"${i}" for i in range(1, len(values) + 2))
        await self.pool.execute(f"INSERT INTO bots ({names}) VALUES ({marks})", bot_id, *values.values())
        access, refresh = self.x.issue_tokens()
        await store_tokens(self.pool, self.cipher, bot_id, access, refresh, datetime.now(UTC) + expires_in)
        return bot_id

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
    async with (
        serve(x.app()) as x_url,
        serve(llm.app()) as llm_url,
        serve(discord.app()) as discord_url,
        httpx.AsyncClient() as http,
    ):
        settings = make_settings(x_url, llm_url)
        yield World(
            pool=pool,
            settings=settings,
            http=http,
            x=x,
            llm=llm,
            discord=discord,
            discord_url=f"{discord_url}/api/webhooks/42/webhook-secret",
            cipher=cipher_from_settings(settings),
        )
