"""Fixtures for the API suite: the app on a fresh database and the real Temporal dev server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from xbot.settings import Settings, load_settings

API_TOKEN = "test-api-token-" + uuid.uuid4().hex


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
