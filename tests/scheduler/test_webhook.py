"""The built-in `webhook` task type against a real loopback HTTP server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI, Request, Response
from temporalio.testing import WorkflowEnvironment

from activities.handlers.base import HandlerDeps, TaskContext
from activities.handlers.registry import TASK_TYPES
from activities.handlers.webhook import WebhookHandler
from launch.worker import build_worker
from tests.scheduler.helpers import advance, executions, insert_bot, insert_task, start_bot, terminate_started
from tests.support.servers import serve
from xbot.errors import NonRetryableTaskError, TaskError
from xbot.settings import load_settings


@dataclass
class Receiver:
    """Answers with the queued status codes (then 200) and keeps what it received."""

    statuses: list[int] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            self.received.append(await request.json())
            self.headers.append(dict(request.headers))
            return Response(status_code=self.statuses.pop(0) if self.statuses else 200)

        return app


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    fake = Receiver()
    async with serve(fake.app()) as base_url:
        yield fake, f"{base_url}/hook"


def context(url: str, **config: Any) -> TaskContext:
    return TaskContext(
        bot_id="bot-1",
        task_id=7,
        task_type="webhook",
        config={"url": url, **config},
        due_at=datetime(2025, 5, 1, 12, 0, tzinfo=UTC),
        attempt=2,
        execution_id=99,
    )


async def test_posts_the_run_and_accepts_2xx(receiver: tuple[Receiver, str], pool: asyncpg.Pool) -> None:
    fake, url = receiver
    fake.statuses = [204]
    async with httpx.AsyncClient() as http:
        handler = WebhookHandler(HandlerDeps(pool, load_settings(), http))
        result = await handler.run(context(url, headers={"x-signature": "abc"}))
    assert result == {"status": 204}
    assert fake.received == [
        {
            "botId": "bot-1",
            "taskId": 7,
            "taskType": "webhook",
            "dueAt": "2025-05-01T12:00:00+00:00",
            "attempt": 2,
        }
    ]
    assert fake.headers[0]["x-signature"] == "abc"


async def test_non_2xx_fails_and_4xx_is_final(receiver: tuple[Receiver, str], pool: asyncpg.Pool) -> None:
    fake, url = receiver
    expected: dict[int, type[Exception]] = {
        500: TaskError,
        503: TaskError,
        408: TaskError,
        429: TaskError,
        400: NonRetryableTaskError,
        404: NonRetryableTaskError,
        422: NonRetryableTaskError,
    }
    async with httpx.AsyncClient() as http:
        handler = WebhookHandler(HandlerDeps(pool, load_settings(), http))
        for status, error in expected.items():
            fake.statuses = [status]
            with pytest.raises(TaskError) as raised:
                await handler.run(context(url))
            assert type(raised.value) is error, status
            assert f"HTTP {status}" in str(raised.value)


async def test_bad_config_is_final(pool: asyncpg.Pool) -> None:
    async with httpx.AsyncClient() as http:
        handler = WebhookHandler(HandlerDeps(pool, load_settings(), http))
        with pytest.raises(NonRetryableTaskError):
            await handler.run(context("ftp://example.invalid/x"))
        with pytest.raises(NonRetryableTaskError):
            await handler.run(context("http://127.0.0.1:9/x", headers={"a": 1}))


async def test_unreachable_url_is_retryable_and_names_only_the_host(pool: asyncpg.Pool) -> None:
    async with httpx.AsyncClient() as http:
        handler = WebhookHandler(HandlerDeps(pool, load_settings(), http))
        with pytest.raises(TaskError) as raised:
            await handler.run(context("http://127.0.0.1:9/hook?token=secret", timeout_seconds=2))
    assert type(raised.value) is TaskError
    assert "secret" not in str(raised.value)


async def test_the_registry_serves_webhook_tasks_to_the_scheduler(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str, receiver: tuple[Receiver, str]
) -> None:
    assert {"webhook", "noop"} <= TASK_TYPES
    fake, url = receiver
    fake.statuses = [500]  # the first attempt fails and is retried
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    task = await insert_task(
        pool,
        bot,
        "webhook",
        config={"url": url},
        interval_minutes=60,
        retry_delay_minutes=1,
        next_planned_run_at=now,
    )
    async with httpx.AsyncClient() as http:
        worker = build_worker(env.client, pool, load_settings(), task_queue, http)  # the real registry
        async with worker:
            await start_bot(env.client, bot, task_queue)
            await advance(env, timedelta(minutes=2))
            await terminate_started(task_queue)
    rows = await executions(pool, bot, task)
    assert [(r["attempt_number"], r["status"]) for r in rows] == [(1, "retrying"), (2, "completed")]
    assert "HTTP 500" in rows[0]["error_message"]
    assert [body["attempt"] for body in fake.received] == [1, 2]
    assert {body["dueAt"] for body in fake.received} == {now.isoformat()}


async def test_the_url_policy_is_applied_again_at_request_time(
    receiver: tuple[Receiver, str], pool: asyncpg.Pool
) -> None:
    """DNS rebinding: a host that resolved to a public address when the definition was saved may
    resolve to a private one now; the request is refused, non-retryably, and never sent."""
    fake, url = receiver
    strict = load_settings(XBOT_ENV="production", XBOT_ALLOW_PRIVATE_URLS="false", TOKEN_ENCRYPTION_KEY=None)
    answers = {"hooks.example.com": ["93.184.215.14", "127.0.0.1"]}

    async def resolver(host: str, port: int) -> list[str]:
        if host not in answers:
            raise OSError("Name or service not known")
        return answers[host]

    async with httpx.AsyncClient() as http:
        handler = WebhookHandler(HandlerDeps(pool, strict, http), resolver=resolver)
        with pytest.raises(NonRetryableTaskError) as refused:
            await handler.run(context("https://hooks.example.com/hook?token=secret"))
        with pytest.raises(NonRetryableTaskError, match="loopback"):
            await handler.run(context(url))  # the loopback receiver itself
        with pytest.raises(TaskError) as unresolved:
            await handler.run(context("https://gone.example.com/hook"))
    assert str(refused.value) == (
        "webhook URL refused by the outbound URL policy: host hooks.example.com resolves to 127.0.0.1,"
        " a loopback address"
    )
    assert type(unresolved.value) is TaskError  # perhaps a passing DNS failure: retried
    assert fake.received == []
