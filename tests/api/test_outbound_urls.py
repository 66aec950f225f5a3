"""Webhook URLs encrypted at rest and masked in answers; the outbound URL policy's 400s; the outbox's
visible state (`GET /bots/{id}/notifications`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from tests.api.conftest import api_settings
from tests.support.factories import insert_bot
from xbot.bots import encrypt_plain_webhook_urls
from xbot.crypto.at_rest import TokenCipher
from xbot.settings import get_settings

WEBHOOK_TOKEN = "Xq9-secret_webhook_token_4c0ffee4c0ffee4c0ffee4c0ffee"
WEBHOOK_URL = f"https://discord.com/api/webhooks/123456789012345678/{WEBHOOK_TOKEN}"
MASKED = "https://discord.com/api/webhooks/123…/****"
POLICY = "(outbound URL policy; see XBOT_ALLOW_PRIVATE_URLS)"


def cipher() -> TokenCipher:
    return TokenCipher(get_settings().token_encryption_key.get_secret_value())  # type: ignore[union-attr]


@pytest.fixture
async def strict(
    pool: asyncpg.Pool, dev_server_env: WorkflowEnvironment, task_queue: str, auth: dict[str, str]
) -> AsyncIterator[httpx.AsyncClient]:
    """The API as in production: private addresses refused (XBOT_ALLOW_PRIVATE_URLS=false)."""
    settings = api_settings(task_queue, XBOT_ALLOW_PRIVATE_URLS="false")
    application: FastAPI = create_app(settings, pool=pool, temporal_client=dev_server_env.client)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=auth) as http:
            yield http


async def test_the_webhook_url_is_stored_encrypted_and_shown_masked(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    created = await client.post("/bots", json={"id": "d", "name": "D", "discord_webhook_url": WEBHOOK_URL})
    assert created.status_code == 201, created.text
    answers = [created, await client.get("/bots/d"), await client.get("/bots")]
    answers.append(await client.patch("/bots/d", json={"name": "D2"}))
    for answer in answers:
        assert WEBHOOK_TOKEN not in answer.text and "123456789012345678" not in answer.text
    assert created.json()["discord_webhook_url"] == MASKED
    assert (await client.get("/bots")).json()[0]["discord_webhook_url"] == MASKED

    row = await pool.fetchrow("SELECT * FROM bots WHERE id = 'd'")
    assert row["discord_webhook_url"] is None  # the plain column is not written any more
    raw = " ".join(f"{value!r}" for value in dict(row).values())
    assert WEBHOOK_TOKEN not in raw and WEBHOOK_TOKEN.encode() not in row["discord_webhook_url_enc"]
    assert cipher().decrypt(row["discord_webhook_url_enc"]) == WEBHOOK_URL
    assert row["discord_webhook_url_hint"] == MASKED


async def test_patching_the_webhook_url(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    await client.post("/bots", json={"id": "d", "name": "D", "discord_webhook_url": WEBHOOK_URL})

    # The masked form sent back is refused (it would replace the secret with asterisks): nothing lost.
    refused = await client.patch("/bots/d", json={"discord_webhook_url": MASKED, "name": "renamed"})
    assert refused.status_code == 422 and "masked form" in refused.json()["error"]
    row = await pool.fetchrow("SELECT name, discord_webhook_url_enc FROM bots WHERE id = 'd'")
    assert row["name"] == "D" and cipher().decrypt(row["discord_webhook_url_enc"]) == WEBHOOK_URL

    other = "https://discord.com/api/webhooks/987654321098765432/another-token"
    changed = await client.patch("/bots/d", json={"discord_webhook_url": other})
    assert changed.json()["discord_webhook_url"] == "https://discord.com/api/webhooks/987…/****"
    enc = await pool.fetchval("SELECT discord_webhook_url_enc FROM bots WHERE id = 'd'")
    assert cipher().decrypt(enc) == other

    cleared = await client.patch("/bots/d", json={"discord_webhook_url": None})
    assert cleared.json()["discord_webhook_url"] is None
    row = await pool.fetchrow("SELECT * FROM bots WHERE id = 'd'")
    assert (row["discord_webhook_url"], row["discord_webhook_url_enc"], row["discord_webhook_url_hint"]) == (
        None,
        None,
        None,
    )


async def test_plain_urls_from_before_the_migration_are_encrypted_at_start(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await insert_bot(pool, "old")
    await pool.execute("UPDATE bots SET discord_webhook_url = $1 WHERE id = 'old'", WEBHOOK_URL)
    # Masked even before: the API never shows a stored URL.
    assert (await client.get("/bots/old")).json()["discord_webhook_url"] == MASKED

    assert await encrypt_plain_webhook_urls(pool, cipher()) == 1
    assert await encrypt_plain_webhook_urls(pool, cipher()) == 0

    row = await pool.fetchrow("SELECT * FROM bots WHERE id = 'old'")
    assert row["discord_webhook_url"] is None and row["discord_webhook_url_hint"] == MASKED
    assert cipher().decrypt(row["discord_webhook_url_enc"]) == WEBHOOK_URL
    assert (await client.get("/bots/old")).json()["discord_webhook_url"] == MASKED


@pytest.mark.parametrize(
    ("field", "url", "reason"),
    [
        (
            "discord_webhook_url",
            "http://127.0.0.1:9/api/webhooks/1/tok",
            "host 127.0.0.1 is a loopback address",
        ),
        ("llm_base_url", "http://169.254.169.254/latest", "is a link-local (cloud metadata service) address"),
        ("llm_base_url", "http://[fd00::5]:8000/v1", "host fd00::5 is a unique-local address"),
        ("discord_webhook_url", "http://0.0.0.0:80/x", "host 0.0.0.0 is an unspecified address"),
        ("llm_base_url", "http://10.0.0.7/v1", "host 10.0.0.7 is a private address"),
        ("llm_base_url", "http://localhost:11434/v1", "host localhost resolves to"),
    ],
)
async def test_private_urls_on_bots_are_a_400_that_writes_nothing(
    strict: httpx.AsyncClient, pool: asyncpg.Pool, field: str, url: str, reason: str
) -> None:
    created = await strict.post("/bots", json={"id": "p", "name": "P", field: url})
    assert created.status_code == 400
    error = created.json()["error"]
    assert error.startswith(f"{field}: ") and reason in error and error.endswith(POLICY)
    assert "tok" not in error and "/v1" not in error  # the path is never echoed
    assert await pool.fetchval("SELECT count(*) FROM bots") == 0

    assert (await strict.post("/bots", json={"id": "p", "name": "P"})).status_code == 201
    patched = await strict.patch("/bots/p", json={field: url, "name": "changed"})
    assert patched.status_code == 400 and reason in patched.json()["error"]
    row = await pool.fetchrow("SELECT name, llm_base_url, discord_webhook_url_enc FROM bots WHERE id = 'p'")
    assert dict(row) == {"name": "P", "llm_base_url": None, "discord_webhook_url_enc": None}


async def test_public_urls_pass_the_policy(strict: httpx.AsyncClient) -> None:
    body = {
        "id": "pub",
        "name": "Public",
        "discord_webhook_url": "https://162.159.135.232/api/webhooks/1/t",
        "llm_base_url": "https://[2606:4700::6810:85e5]/v1",
    }
    assert (await strict.post("/bots", json=body)).status_code == 201


async def test_the_setting_lets_private_urls_through(client: httpx.AsyncClient) -> None:
    body = {"id": "dev", "name": "Dev", "discord_webhook_url": "http://127.0.0.1:9/hook"}
    created = await client.post("/bots", json={**body, "llm_base_url": "http://10.0.0.7/v1"})
    assert created.status_code == 201  # XBOT_ENV=test: allowed by default
    assert created.json()["discord_webhook_url"] == "http://127.0.0.1:9/****"


def _webhook_task(url: Any, **config: Any) -> dict[str, Any]:
    return {"task_type": "webhook", "interval_minutes": 5, "config": {"url": url, **config}}


async def test_webhook_task_urls_go_through_the_policy(strict: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    await insert_bot(pool, "b")
    cases = [
        ("http://10.1.2.3/hook?token=abc", "config.url: host 10.1.2.3 is a private address"),
        ("http://169.254.169.254/latest/meta-data", "link-local (cloud metadata service)"),
        ("ftp://files.example.com/x", "config.url: must be an http:// or https:// URL"),
    ]
    for url, reason in cases:
        refused = await strict.post("/bots/b/tasks", json=_webhook_task(url))
        assert refused.status_code == 400, refused.text
        assert reason in refused.json()["error"] and "token=abc" not in refused.text
    assert await pool.fetchval("SELECT count(*) FROM bot_task_definitions") == 0

    created = await strict.post("/bots/b/tasks", json=_webhook_task("https://162.159.135.232/hook"))
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    patched = await strict.patch(f"/bots/b/tasks/{task_id}", json={"config": {"url": "http://127.0.0.1:80/"}})
    assert patched.status_code == 400 and "loopback" in patched.json()["error"]
    stored = await pool.fetchval("SELECT config FROM bot_task_definitions WHERE id = $1", task_id)
    assert stored == {"url": "https://162.159.135.232/hook"}

    # A noop task with a private address in its config calls nothing: not checked.
    noop = {"task_type": "noop", "interval_minutes": 5, "config": {"url": "http://127.0.0.1/"}}
    assert (await strict.post("/bots/b/tasks", json=noop)).status_code == 201
    # Becoming a webhook task is checked.
    noop_id = (await strict.get("/bots/b/tasks")).json()[-1]["id"]
    retyped = await strict.patch(f"/bots/b/tasks/{noop_id}", json={"task_type": "webhook"})
    assert retyped.status_code == 400 and "loopback" in retyped.json()["error"]


async def test_webhook_task_config_shape_is_checked_when_saved(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await insert_bot(pool, "b")
    missing = await client.post("/bots/b/tasks", json={"task_type": "webhook", "interval_minutes": 5})
    assert missing.status_code == 422 and "config.url" in missing.json()["error"]
    bad_headers = await client.post(
        "/bots/b/tasks", json=_webhook_task("http://127.0.0.1:9/h", headers={"a": 1})
    )
    assert bad_headers.status_code == 422 and "config.headers" in bad_headers.json()["error"]


async def test_webhook_task_secrets_are_masked_and_kept_on_a_round_trip(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await insert_bot(pool, "b")
    headers = {"Authorization": "Bearer hook-secret-1", "X-Api-Key": "hook-secret-2", "X-Trace": "visible"}
    url = "https://hooks.example.com/run?token=hook-secret-3&v=2"
    created = await client.post("/bots/b/tasks", json=_webhook_task(url, headers=headers, timeout_seconds=5))
    assert created.status_code == 201, created.text
    task = created.json()
    assert task["config"] == {
        "url": "https://hooks.example.com/run?token=****&v=2",
        "headers": {"Authorization": "****", "X-Api-Key": "****", "X-Trace": "visible"},
        "timeout_seconds": 5,
    }
    listed = await client.get("/bots/b/tasks")
    assert "hook-secret" not in listed.text and "hook-secret" not in created.text

    # The config sent back as shown, with one change: the secrets stay as stored.
    sent_back = {**task["config"], "timeout_seconds": 9}
    patched = await client.patch(f"/bots/b/tasks/{task['id']}", json={"config": sent_back})
    assert patched.status_code == 200 and "hook-secret" not in patched.text
    stored = await pool.fetchval("SELECT config FROM bot_task_definitions WHERE id = $1", task["id"])
    assert stored == {"url": url, "headers": headers, "timeout_seconds": 9}

    # A new secret replaces the old one.
    renewed = {**sent_back, "headers": {**sent_back["headers"], "Authorization": "Bearer hook-secret-4"}}
    assert (await client.patch(f"/bots/b/tasks/{task['id']}", json={"config": renewed})).status_code == 200
    stored = await pool.fetchval("SELECT config FROM bot_task_definitions WHERE id = $1", task["id"])
    assert stored["headers"]["Authorization"] == "Bearer hook-secret-4"
    assert stored["headers"]["X-Api-Key"] == "hook-secret-2"


async def test_the_outbox_is_visible_per_bot(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    await client.post("/bots", json={"id": "n", "name": "N", "discord_webhook_url": WEBHOOK_URL})
    replies = []
    for n in ("1", "2"):
        post = await pool.fetchval(
            "INSERT INTO pulled_posts (bot_id, x_post_id, text) VALUES ('n', $1, 'hi') RETURNING id", n
        )
        replies.append(
            await pool.fetchval(
                "INSERT INTO post_replies (bot_id, pulled_post_id, in_reply_to_x_post_id, status, text)"
                " VALUES ('n', $1, $2, 'posted', 'reply text') RETURNING id",
                post,
                n,
            )
        )
    for reply_id, status, error in ((replies[0], "sent", None), (replies[1], "failed", "Discord refused")):
        await pool.execute(
            "INSERT INTO notification_outbox (bot_id, kind, reply_id, payload, status, attempts, last_error)"
            " VALUES ('n', 'discord_reply', $1, '{\"content\": \"reply text\"}', $2, 1, $3)",
            reply_id,
            status,
            error,
        )

    listed = await client.get("/bots/n/notifications")
    assert listed.status_code == 200
    assert [(m["reply_id"], m["status"], m["last_error"]) for m in listed.json()] == [
        (replies[1], "failed", "Discord refused"),
        (replies[0], "sent", None),
    ]
    assert "reply text" not in listed.text and WEBHOOK_TOKEN not in listed.text
    failed = await client.get("/bots/n/notifications", params={"status": "failed"})
    assert [m["reply_id"] for m in failed.json()] == [replies[1]]
    assert (await client.get("/bots/n/notifications", params={"status": "lost"})).status_code == 422
    assert (await client.get("/bots/nobody/notifications")).status_code == 404
