"""Connecting a bot's X account (OAuth 2.0 Authorization Code with PKCE) against the fake X on 127.0.0.1.

The fake's authorize page answers at once with a redirect carrying a code; its token endpoint accepts the
code once, with the verifier whose S256 hash was the challenge and the same redirect URI.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from tests.api.conftest import api_settings
from tests.fakes.fake_x import CLIENT_ID, CLIENT_SECRET, FakeX
from tests.support.factories import insert_bot, insert_execution, insert_task
from tests.support.servers import serve
from tests.support.waiting import eventually
from xbot.crypto.at_rest import cipher_from_settings
from xbot.settings import Settings
from xbot.x.connect import s256
from xbot.x.tokens import store_tokens

REDIRECT_URI = "http://api/oauth/x/callback"


@dataclass
class Connect:
    x: FakeX
    x_url: str
    settings: Settings
    client: httpx.AsyncClient  # the API, with the bearer token
    browser: httpx.AsyncClient  # the API, without it (as X's redirect arrives)
    outside: httpx.AsyncClient  # real HTTP, to the fake X

    async def authorize(self, bot_id: str) -> tuple[dict[str, str], str]:
        """POST /connect, then the fake X's authorize page: the query sent to X and the callback URL."""
        started = await self.client.post(f"/bots/{bot_id}/connect")
        assert started.status_code == 200, started.text
        url = started.json()["authorize_url"]
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        answer = await self.outside.get(url)
        assert answer.status_code == 302, answer.text
        return query, answer.headers["location"]

    async def callback(self, location: str) -> httpx.Response:
        parts = urlsplit(location)
        return await self.browser.get(f"{parts.path}?{parts.query}")


def connect_settings(task_queue: str, x_url: str, *, public: bool = False) -> Settings:
    extra = {} if public else {"X_CLIENT_SECRET": CLIENT_SECRET}
    return api_settings(
        task_queue,
        X_API_BASE_URL=x_url,
        X_AUTHORIZE_URL=f"{x_url}/i/oauth2/authorize",
        X_REDIRECT_URI=REDIRECT_URI,
        X_CLIENT_ID=CLIENT_ID,
        X_REQUEST_TIMEOUT_SECONDS=5,
        **extra,
    )


@pytest.fixture(params=["confidential"])
async def connect(
    request: pytest.FixtureRequest, pool: asyncpg.Pool, dev_server_env: WorkflowEnvironment, task_queue: str
) -> AsyncIterator[Connect]:
    public = request.param == "public"
    x = FakeX(public_client=public)
    async with serve(x.app()) as x_url:
        settings = connect_settings(task_queue, x_url, public=public)
        app: FastAPI = create_app(settings, pool=pool, temporal_client=dev_server_env.client)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            headers = {"Authorization": f"Bearer {settings.api_token.get_secret_value()}"}  # type: ignore[union-attr]
            async with (
                httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers) as client,
                httpx.AsyncClient(transport=transport, base_url="http://api") as browser,
                httpx.AsyncClient() as outside,
            ):
                yield Connect(x, x_url, settings, client, browser, outside)


async def _bot_state(pool: asyncpg.Pool, bot_id: str) -> dict[str, object]:
    row = await pool.fetchrow(
        "SELECT b.auth_state, b.x_user_id, b.x_username, t.version, t.refresh_note"
        " FROM bots b LEFT JOIN bot_tokens t ON t.bot_id = b.id WHERE b.id = $1",
        bot_id,
    )
    assert row is not None
    return dict(row)


async def test_connect_returns_an_authorize_url_with_pkce_and_keeps_no_secret_in_clear(
    connect: Connect, pool: asyncpg.Pool, bot_id: str
) -> None:
    await insert_bot(pool, bot_id)
    started = await connect.client.post(f"/bots/{bot_id}/connect")
    assert started.status_code == 200
    body = started.json()
    url = urlsplit(body["authorize_url"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{connect.x_url}/i/oauth2/authorize"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["response_type"] == "code" and query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == REDIRECT_URI == body["redirect_uri"]
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert set(query["scope"].split()) >= {"tweet.read", "tweet.write", "users.read", "offline.access"}
    assert "%20" in body["authorize_url"]  # spaces as in X's examples
    assert body["scopes"] == sorted(query["scope"].split())

    row = await pool.fetchrow("SELECT * FROM oauth_connect_requests WHERE bot_id = $1", bot_id)
    assert row is not None
    assert row["state_hash"] == hashlib.sha256(query["state"].encode()).digest()
    assert query["state"].encode() not in bytes(row["code_verifier_enc"])
    stored = row["expires_at"] - row["created_at"]
    assert timedelta(minutes=9) < stored <= timedelta(minutes=10, seconds=1)
    verifier = cipher_from_settings(connect.settings).decrypt(row["code_verifier_enc"])
    assert s256(verifier) == query["code_challenge"] and 43 <= len(verifier) <= 128

    again = await connect.client.post(f"/bots/{bot_id}/connect")
    assert parse_qs(urlsplit(again.json()["authorize_url"]).query)["state"][0] != query["state"]
    assert (await connect.browser.post(f"/bots/{bot_id}/connect")).status_code == 401
    assert (await connect.client.post("/bots/nobody/connect")).status_code == 404


@pytest.mark.parametrize("connect", ["confidential", "public"], indirect=True)
async def test_the_callback_stores_the_tokens_reads_the_account_and_goes_back_to_the_dashboard(
    connect: Connect, pool: asyncpg.Pool, bot_id: str
) -> None:
    await insert_bot(pool, bot_id)
    await insert_task(pool, bot_id, "reply_to_mentions")
    _, location = await connect.authorize(bot_id)
    answer = await connect.callback(location)

    assert answer.status_code == 303
    assert answer.headers["location"] == f"/?x_connect=connected#/bots/{bot_id}"
    state = await _bot_state(pool, bot_id)
    assert state["auth_state"] == "ok" and state["x_user_id"] == "1000" and state["x_username"] == "helperbot"
    token_request = connect.x.requests_to("token")
    assert len(token_request) == 1
    # The stored token works at X, and is stored encrypted.
    stored = await pool.fetchrow("SELECT access_token_enc, scope FROM bot_tokens WHERE bot_id = $1", bot_id)
    assert stored is not None
    access = cipher_from_settings(connect.settings).decrypt(stored["access_token_enc"])
    assert access in connect.x.access_tokens and access.encode() not in bytes(stored["access_token_enc"])
    me = connect.x.requests_to("users_me")
    assert me and me[-1].authorization == f"Bearer {access}"

    bot = (await connect.client.get(f"/bots/{bot_id}")).json()
    health = bot["x_connection"]
    assert health["connected"] is True and health["needs_reauthorization"] is False
    assert health["refreshable"] is True and 7000 < health["expires_in"] <= 7200
    assert set(health["scopes"]) >= {"tweet.read", "tweet.write", "users.read", "offline.access"}
    assert health["missing_scopes"] == []
    logs = await pool.fetch("SELECT content FROM logs WHERE bot_id = $1", bot_id)
    assert any("X account @helperbot connected" in row["content"] for row in logs)
    assert not any(access in row["content"] for row in logs)
    # The state is spent.
    assert await pool.fetchval("SELECT count(*) FROM oauth_connect_requests WHERE bot_id = $1", bot_id) == 0


async def _unchanged_after(
    connect: Connect, pool: asyncpg.Pool, bot_id: str, answer: httpx.Response, says: str
) -> None:
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    assert says in answer.text
    assert "code-" not in answer.text and "state=" not in answer.text
    state = await _bot_state(pool, bot_id)
    assert state["version"] is None and state["x_user_id"] is None and state["auth_state"] == "ok"


async def test_a_wrong_state_changes_nothing(connect: Connect, pool: asyncpg.Pool, bot_id: str) -> None:
    await insert_bot(pool, bot_id)
    _, location = await connect.authorize(bot_id)
    forged = location.replace("state=", "state=x", 1)
    answer = await connect.callback(forged)
    await _unchanged_after(connect, pool, bot_id, answer, "unknown or was already used")
    assert connect.x.requests_to("token") == []
    missing = await connect.browser.get("/oauth/x/callback?code=abc")
    assert missing.status_code == 400 and "no state" in missing.text


async def test_a_reused_state_changes_nothing(connect: Connect, pool: asyncpg.Pool, bot_id: str) -> None:
    other = f"{bot_id}-other"
    await insert_bot(pool, bot_id)
    await insert_bot(pool, other)
    _, location = await connect.authorize(bot_id)
    assert (await connect.callback(location)).status_code == 303
    before = await _bot_state(pool, bot_id)
    replayed = await connect.callback(location)
    assert replayed.status_code == 400 and "already used" in replayed.text
    assert await _bot_state(pool, bot_id) == before
    assert len(connect.x.requests_to("token")) == 1


async def test_an_expired_state_changes_nothing(connect: Connect, pool: asyncpg.Pool, bot_id: str) -> None:
    await insert_bot(pool, bot_id)
    _, location = await connect.authorize(bot_id)
    await pool.execute(
        "UPDATE oauth_connect_requests SET expires_at = now() - interval '1 second' WHERE bot_id = $1", bot_id
    )
    answer = await connect.callback(location)
    await _unchanged_after(connect, pool, bot_id, answer, "expired")
    assert connect.x.requests_to("token") == []


async def test_access_denied_on_x_changes_nothing(connect: Connect, pool: asyncpg.Pool, bot_id: str) -> None:
    await insert_bot(pool, bot_id)
    connect.x.authorize_answer = "deny"
    _, location = await connect.authorize(bot_id)
    assert "error=access_denied" in location
    answer = await connect.callback(location)
    await _unchanged_after(connect, pool, bot_id, answer, "Access was denied on X")
    assert f"/#/bots/{bot_id}" in answer.text
    assert connect.x.requests_to("token") == []


async def test_a_code_x_refuses_changes_nothing(connect: Connect, pool: asyncpg.Pool, bot_id: str) -> None:
    await insert_bot(pool, bot_id)
    _, location = await connect.authorize(bot_id)
    connect.x.auth_codes.clear()  # X no longer knows the code (expired after 30 s, or used)
    answer = await connect.callback(location)
    await _unchanged_after(
        connect, pool, bot_id, answer, "X refused the authorization code (invalid_request)"
    )
    assert len(connect.x.requests_to("token")) == 1


async def test_a_verifier_that_does_not_match_the_challenge_is_refused(
    connect: Connect, pool: asyncpg.Pool, bot_id: str
) -> None:
    await insert_bot(pool, bot_id)
    _, location = await connect.authorize(bot_id)
    # Another verifier than the one whose challenge X saw: X refuses the code.
    await pool.execute(
        "UPDATE oauth_connect_requests SET code_verifier_enc = $2 WHERE bot_id = $1",
        bot_id,
        cipher_from_settings(connect.settings).encrypt("another-verifier-" + "v" * 40),
    )
    answer = await connect.callback(location)
    await _unchanged_after(connect, pool, bot_id, answer, "X refused the authorization code")


async def test_reconnecting_clears_needs_reauthorization_and_resumes_the_x_tasks(
    connect: Connect, pool: asyncpg.Pool, bot_id: str, worker: None
) -> None:
    cipher = cipher_from_settings(connect.settings)
    await insert_bot(pool, bot_id, x_user_id="1000", x_username="helperbot", mentions_since_id="42")
    await store_tokens(
        pool, cipher, bot_id, "old-access", "old-refresh", datetime.now(UTC) - timedelta(hours=1)
    )
    await pool.execute("UPDATE bots SET auth_state = 'needs_reauthorization' WHERE id = $1", bot_id)
    await pool.execute("UPDATE bot_tokens SET refresh_note = 'invalid_grant' WHERE bot_id = $1", bot_id)
    await insert_task(pool, bot_id, "noop", interval_minutes=60)
    later = datetime.now(UTC) + timedelta(hours=1)
    x_task = await insert_task(
        pool, bot_id, "pull_mentions", is_active=False, consecutive_failures=5, next_planned_run_at=later
    )
    await insert_execution(
        pool,
        bot_id,
        x_task,
        "failed",
        datetime.now(UTC) - timedelta(minutes=5),
        task_type="pull_mentions",
        error=f"ReauthorizationRequiredError: bot {bot_id} needs re-authorization: invalid_grant",
    )
    before = (await connect.client.get(f"/bots/{bot_id}")).json()["x_connection"]
    assert before["needs_reauthorization"] is True and before["connected"] is False

    started = await connect.client.post(f"/bots/{bot_id}/start")
    assert started.status_code == 200, started.text
    status = (await connect.client.get(f"/bots/{bot_id}/status")).json()
    assert x_task not in [task["id"] for task in status["tasks"]]

    _, location = await connect.authorize(bot_id)
    assert (await connect.callback(location)).status_code == 303

    state = await _bot_state(pool, bot_id)
    assert state["auth_state"] == "ok" and state["refresh_note"] is None
    row = await pool.fetchrow(
        "SELECT is_active, consecutive_failures FROM bot_task_definitions WHERE id = $1", x_task
    )
    assert row is not None and row["is_active"] is True and row["consecutive_failures"] == 0
    # Same account: its mentions cursor stays.
    assert await pool.fetchval("SELECT mentions_since_id FROM bots WHERE id = $1", bot_id) == "42"

    async def reloaded() -> bool:
        status = (await connect.client.get(f"/bots/{bot_id}/status")).json()
        return x_task in [task["id"] for task in status["tasks"]]

    await eventually(reloaded, timeout=20, what="the scheduler to reload the resumed X task")
    health = (await connect.client.get(f"/bots/{bot_id}")).json()["x_connection"]
    assert health["connected"] is True and health["needs_reauthorization"] is False
    await connect.client.post(f"/bots/{bot_id}/stop")


async def test_the_health_names_scopes_the_tasks_need_but_the_token_lacks(
    connect: Connect, pool: asyncpg.Pool, bot_id: str
) -> None:
    await insert_bot(pool, bot_id)
    await insert_task(pool, bot_id, "reply_to_mentions")
    connect.x.granted_scope = "tweet.read users.read"  # the user unticked posting and offline access
    _, location = await connect.authorize(bot_id)
    assert (await connect.callback(location)).status_code == 303
    health = (await connect.client.get(f"/bots/{bot_id}")).json()["x_connection"]
    assert health["scopes"] == ["tweet.read", "users.read"]
    assert health["missing_scopes"] == ["offline.access", "tweet.write"]
    assert health["refreshable"] is False and health["connected"] is True


async def test_connect_needs_the_redirect_uri_setting(
    pool: asyncpg.Pool, dev_server_env: WorkflowEnvironment, task_queue: str, bot_id: str
) -> None:
    app = create_app(api_settings(task_queue), pool=pool, temporal_client=dev_server_env.client)
    await insert_bot(pool, bot_id)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        settings = app.state.api
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://api",
            headers={"Authorization": f"Bearer {settings.api_token}"},
        ) as client:
            answer = await client.post(f"/bots/{bot_id}/connect")
    assert answer.status_code == 503 and "X_REDIRECT_URI" in answer.json()["error"]


async def test_a_token_endpoint_outage_changes_nothing_and_says_try_again(
    connect: Connect, pool: asyncpg.Pool, bot_id: str
) -> None:
    await insert_bot(pool, bot_id)
    _, location = await connect.authorize(bot_id)
    connect.x.inject("token", "500")
    answer = await connect.callback(location)
    assert answer.status_code == 502 and "Try again" in answer.text
    state = await _bot_state(pool, bot_id)
    assert state["version"] is None and state["x_user_id"] is None


async def test_pages_and_logs_never_carry_the_state_the_code_or_a_token(
    connect: Connect, pool: asyncpg.Pool, bot_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await insert_bot(pool, bot_id)
    query, location = await connect.authorize(bot_id)
    code = parse_qs(urlsplit(location).query)["code"][0]
    connect.x.inject("token", "500")  # a failure page, then a success
    failed = await connect.callback(location)
    _, location = await connect.authorize(bot_id)
    succeeded = await connect.callback(location)
    assert succeeded.status_code == 303
    secrets = [query["state"], code, *connect.x.access_tokens]
    # The app's own log lines (the test's client and httpx's debug lines carry the URLs, as a browser would).
    ours = [r.getMessage() for r in caplog.records if r.name.split(".")[0] in ("api", "xbot")]
    assert ours  # the check can see something
    shown = failed.text + str(succeeded.headers) + " ".join(ours)
    shown += " ".join(row["content"] + str(row["context"]) for row in await pool.fetch("SELECT * FROM logs"))
    assert not [secret for secret in secrets if secret in shown]
