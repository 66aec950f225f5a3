"""Fixtures for the API suite: the app on a fresh database and the real Temporal dev server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TypeVar

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from tests.support.factories import new_bot_id
from tests.support.servers import serve_address
from xbot.settings import Settings, load_settings

API_TOKEN = "test-api-token-" + uuid.uuid4().hex
T = TypeVar("T")


def api_settings(task_queue: str, **overrides: object) -> Settings:
    return load_settings(API_TOKEN=API_TOKEN, TEMPORAL_TASK_QUEUE=task_queue, XBOT_ENV="test", **overrides)


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
async def app(
    pool: asyncpg.Pool, dev_server_env: WorkflowEnvironment, task_queue: str
) -> AsyncIterator[FastAPI]:
    application = create_app(
        api_settings(task_queue), pool=pool, temporal_client=dev_server_env.client, feed_poll_interval=0.05
    )
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI, auth: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=auth) as http:
        yield http


@pytest.fixture
async def anonymous(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        yield http


@pytest.fixture
async def live_server(app: FastAPI) -> AsyncIterator[str]:
    async with serve_address(app) as address:
        yield address


@pytest.fixture
async def worker(
    pool: asyncpg.Pool, dev_server_env: WorkflowEnvironment, task_queue: str
) -> AsyncIterator[None]:
    """The real BotScheduler worker, in process, on this test's task queue."""
    from launch.worker import build_worker

    settings = api_settings(task_queue)
    async with httpx.AsyncClient(timeout=10) as http:
        running = build_worker(dev_server_env.client, pool, settings, task_queue, http)
        async with running:
            yield


@pytest.fixture
def bot_id() -> str:
    """Unique per test: workflow ids outlive a test on the shared dev server."""
    return new_bot_id()
