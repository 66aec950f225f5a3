"""The real `xbot api` process against hostile clients: no token, wrong tokens, bad input.

Routes are enumerated from the app itself, so a route added later is covered (or must be declared
public here). schemathesis (tests/api) fuzzes the schema; this covers the cases it cannot know.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import websockets
from fastapi import FastAPI

from api.app import create_app
from tests.chaos.conftest import Fakes
from tests.chaos.helpers import api_proc, eventually, service_env
from tests.chaos.infra import RestartableTemporal, free_port, processes
from tests.conftest import TEST_TOKEN_KEY
from tests.support.factories import insert_bot, insert_task
from xbot.settings import load_settings

pytestmark = [pytest.mark.chaos, pytest.mark.system]

TOKEN = "xbt_9c2f7e1a4b8d6f3e0a5c7b9d1e3f5a7c"
BOT = "hostile-bot"
# Reachable without a token, on purpose: liveness, the dashboard shell, the API's own docs, and the
# CORS preflight of the codec endpoints (browsers send it without credentials).
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    # X sends the browser back here; the single-use `state` is the credential (issue 14).
    ("GET", "/oauth/x/callback"),
    ("GET", "/redoc"),
    ("OPTIONS", "/codec/decode"),
    ("OPTIONS", "/codec/encode"),
}
TABLES = (
    "bots", "bot_tokens", "bot_banned_users", "bot_task_definitions", "bot_task_executions", "logs",
    "rate_limit_tracking", "x_users", "pulled_posts", "post_replies", "app_settings",
)  # fmt: skip


def http_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) of every HTTP route, including those of included routers."""
    try:
        from fastapi.routing import iter_route_contexts

        contexts: list[Any] = list(iter_route_contexts(app.routes))
    except ImportError:  # FastAPI before included-router contexts: routes are flat
        contexts = list(app.routes)
    routes = []
    for route in contexts:
        for method in sorted(getattr(route, "methods", None) or ()):
            if method != "HEAD":
                routes.append((method, route.path))
    return routes


def websocket_routes(app: FastAPI) -> list[str]:
    from fastapi.routing import APIWebSocketRoute

    try:
        from fastapi.routing import iter_route_contexts

        contexts: list[Any] = list(iter_route_contexts(app.routes))
    except ImportError:
        contexts = list(app.routes)
    return [c.path for c in contexts if isinstance(getattr(c, "original_route", c), APIWebSocketRoute)]


async def row_counts(pool: asyncpg.Pool) -> dict[str, int]:
    return {table: await pool.fetchval(f"SELECT count(*) FROM {table}") for table in TABLES}


async def seed(pool: asyncpg.Pool) -> dict[str, str]:
    """A bot with a task, an execution, a log row and a reply, so that every id in a path exists."""
    await insert_bot(pool, BOT, name="Hostile target")
    task = await insert_task(pool, BOT)
    await pool.execute(
        "INSERT INTO bot_task_executions (bot_id, task_definition_id, task_type, status) VALUES ($1, $2, 'noop', 'completed')",
        BOT,
        task,
    )
    await pool.execute("INSERT INTO logs (bot_id, level, content) VALUES ($1, 'info', 'hello')", BOT)
    post = await pool.fetchval(
        "INSERT INTO pulled_posts (bot_id, x_post_id, text) VALUES ($1, '42', 'a mention') RETURNING id", BOT
    )
    reply = await pool.fetchval(
        "INSERT INTO post_replies (bot_id, pulled_post_id, in_reply_to_x_post_id, status, text)"
        " VALUES ($1, $2, '42', 'pending_approval', 'a draft') RETURNING id",
        BOT,
        post,
    )
    config = await pool.fetchval(
        "INSERT INTO llm_configs (name, model) VALUES ('hostile', 'a-model') RETURNING id"
    )
    prompt = await pool.fetchval(
        "INSERT INTO prompt_templates (name, system_text) VALUES ('hostile', 'You are {persona}.') RETURNING id"
    )
    return {
        "botId": BOT,
        "taskId": str(task),
        "replyId": str(reply),
        "xUserId": "12345",
        "configId": str(config),
        "promptId": str(prompt),
    }


def concrete(template: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], template)


def assert_error_body(response: httpx.Response, context: object) -> None:
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"{context}: not JSON: {response.text[:200]!r}") from None
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], (context, body)


async def send_all(api: httpx.AsyncClient, cases: list[tuple[str, str, Any]]) -> list[tuple[Any, ...]]:
    """Send each (method, raw target, JSON body or bytes) with the token; return the answers that
    were not a 4xx with an `{error}` body."""
    unexpected: list[tuple[Any, ...]] = []
    for method, target, body in cases:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        content: bytes | None = None
        if isinstance(body, bytes):
            content = body
        elif body is not None or method in ("POST", "PATCH"):
            content = json.dumps(body).encode()
        if content is not None:
            headers["content-type"] = "application/json"
        request = api.build_request(method, "/", headers=headers, content=content)
        request.extensions["target"] = target.encode()  # sent exactly as written, nothing normalized
        response = await api.send(request)
        try:
            error = response.json().get("error") if 400 <= response.status_code < 500 else None
        except (ValueError, AttributeError):
            error = None
        if not (isinstance(error, str) and error):
            unexpected.append(
                (method, target[:80], str(body)[:120], response.status_code, response.text[:200])
            )
    return unexpected


@pytest.fixture
async def api(
    chaos_database_url: str, chaos_temporal: RestartableTemporal, fakes: Fakes, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """The API as `xbot api` runs it, and a client with a 10 s timeout (no token by default)."""
    port = free_port()
    env = service_env(
        fakes, chaos_database_url, chaos_temporal.address, "hostile", TEST_TOKEN_KEY, API_TOKEN=TOKEN
    )
    with processes() as procs:
        server = api_proc(env, port, tmp_path)
        procs.append(server)
        server.start()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:

            async def health() -> int:
                try:
                    return (await client.get("/healthz")).status_code
                except httpx.TransportError:
                    return 0

            await eventually(health, lambda code: code == 200, 60, "API up")
            try:
                yield client
            except AssertionError:
                print(server.tail(4000))
                raise


async def test_every_route_and_the_websocket_refuse_missing_or_wrong_tokens(
    api: httpx.AsyncClient, chaos_pool: asyncpg.Pool
) -> None:
    """Promise: nothing but the declared public routes answers without the API token. Every
    route the app has (enumerated from `app.routes`, whatever its method) answers 401 with an
    `{error}` body to no token, a wrong token, a token off by one character, the right token in the
    wrong scheme or in the query string; the WebSocket feed refuses the handshake the same way;
    nothing is written. With the right token the same GET routes answer 200."""
    ids = await seed(chaos_pool)
    app = create_app(load_settings(API_TOKEN=TOKEN, XBOT_ENV="test"))
    routes = http_routes(app)
    assert len(routes) >= 25, routes  # the whole API, not an empty loop
    public = {r for r in routes if r in PUBLIC}
    assert public == PUBLIC, f"declared public routes missing: {PUBLIC - public}"
    before = await row_counts(chaos_pool)
    near_miss = TOKEN[:-1] + ("0" if TOKEN[-1] != "0" else "1")
    attempts: list[tuple[dict[str, str], dict[str, str]]] = [
        ({}, {}),
        ({"Authorization": "Bearer wrong"}, {}),
        ({"Authorization": f"Bearer {near_miss}"}, {}),
        ({"Authorization": f"Basic {base64.b64encode(f'user:{TOKEN}'.encode()).decode()}"}, {}),
        ({"Authorization": TOKEN}, {}),
        ({"Authorization": "Bearer"}, {}),
        ({}, {"token": TOKEN}),  # the query string is for the WebSocket handshake only
    ]
    for method, template in routes:
        if (method, template) in PUBLIC or template.startswith("/static"):
            continue
        path = concrete(template, ids)
        for headers, params in attempts:
            response = await api.request(method, path, headers=headers, params=params, json={})
            assert response.status_code in (401, 403), (method, path, headers, response.status_code)
            assert_error_body(response, (method, path, headers))
        if method == "GET":
            allowed = await api.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
            assert allowed.status_code == 200, (path, allowed.text)

    ws_routes = websocket_routes(app)
    assert ws_routes == ["/bots/{botId}/ws"]
    ws_base = str(api.base_url).replace("http://", "ws://") + concrete(ws_routes[0], ids)
    for url, headers in (
        (ws_base, {}),
        (ws_base, {"Authorization": "Bearer wrong"}),
        (f"{ws_base}?token={near_miss}", {}),
        (f"{ws_base}?token=", {}),
    ):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url, additional_headers=headers, open_timeout=10):
                pass
        assert refused.value.response.status_code == 401, url
        assert json.loads(refused.value.response.body)["error"]
    async with websockets.connect(f"{ws_base}?token={TOKEN}", open_timeout=10) as feed:
        assert feed.response is not None and feed.response.status_code == 101
    assert await row_counts(chaos_pool) == before


async def test_bad_input_gets_a_4xx_error_and_writes_nothing(
    api: httpx.AsyncClient, chaos_pool: asyncpg.Pool
) -> None:
    """Promise: hostile input never reaches the database and never breaks the server. Oversized
    bodies, unknown or read-only fields, wrong types, malformed JSON, deep nesting, invalid UTF-8,
    path traversal in ids (`../`, `%2e%2e`, encoded slashes, NUL), out-of-range ids and huge or
    malformed pagination parameters all get a 4xx answer with an `{error}` body, never a 5xx, and
    no row in any table changes."""
    ids = await seed(chaos_pool)
    bot, task, reply = (
        f"/bots/{BOT}",
        f"/bots/{BOT}/tasks/{ids['taskId']}",
        f"/bots/{BOT}/replies/{ids['replyId']}",
    )
    snapshot = {t: await chaos_pool.fetch(f"SELECT * FROM {t} ORDER BY 1") for t in TABLES}
    big = "x" * 300_000
    deep = "[" * 50_000 + "]" * 50_000
    # (method, path or raw request target, JSON body or raw bytes)
    cases: list[tuple[str, str, Any]] = [
        # Oversized bodies.
        ("POST", "/bots", {"id": "big", "name": "big", "persona_prompt": big}),
        ("PATCH", bot, {"persona_prompt": big}),
        ("POST", f"{bot}/tasks", {"task_type": "noop", "interval_minutes": 5, "config": {"blob": big}}),
        ("PATCH", reply, {"text": big}),
        ("POST", "/codec/encode", b'{"payloads": [{"data": "' + b"A" * 9_000_000 + b'"}]}'),
        # Unknown and read-only fields.
        ("POST", "/bots", {"id": "sneaky", "name": "s", "is_admin": True}),
        ("PATCH", bot, {"auth_state": "ok"}),
        ("PATCH", bot, {"scheduler_enabled": True}),
        ("PATCH", bot, {"id": "renamed"}),
        ("POST", f"{bot}/tasks", {"task_type": "noop", "interval_minutes": 5, "consecutive_failures": 0}),
        ("PATCH", task, {"is_active": True, "last_successful_run_at": "2030-01-01T00:00:00Z"}),
        ("PATCH", reply, {"status": "posted"}),
        ("POST", "/bots", {"id": "tok", "name": "t", "tokens": {"access_token": "a", "admin": True}}),
        # Wrong types.
        ("POST", "/bots", {"id": 5, "name": ["x"]}),
        ("POST", "/bots", {"id": "types", "name": "t", "dry_run": "maybe"}),
        ("PATCH", bot, {"llm_temperature": "hot"}),
        ("POST", f"{bot}/tasks", {"task_type": "noop", "interval_minutes": 5, "config": ["not", "object"]}),
        ("POST", f"{bot}/tasks", {"task_type": "noop", "interval_minutes": 5, "dependencies": "1,2"}),
        ("POST", f"{bot}/tasks", {"task_type": "noop", "interval_minutes": 2**70}),
        ("PATCH", reply, {"text": 280}),
        ("POST", "/bots", [1, 2, 3]),
        ("POST", "/bots", None),
        # Malformed bodies.
        ("POST", "/bots", b'{"id": "half", "name": '),
        ("POST", "/bots", deep.encode()),
        ("POST", "/bots", b'{"id": "\xff\xfe", "name": "bad utf-8"}'),
        ("POST", "/bots", b""),
        ("PATCH", bot, b"not json at all"),
        # Path traversal and hostile ids (raw request targets: nothing normalizes them).
        ("GET", "/bots/../bots", None),
        ("GET", "/bots/%2e%2e", None),
        ("GET", "/bots/%2e%2e%2fbots", None),
        ("GET", "/bots/..%2F..%2Fetc%2Fpasswd", None),
        ("DELETE", "/bots/%2e%2e", None),
        ("PATCH", "/bots/..%2Fhostile-bot", {"name": "pwned"}),
        ("POST", "/bots/%2e%2e/start", None),
        ("GET", f"/bots/{BOT}%00", None),
        ("GET", "/bots/" + "a" * 65, None),
        ("GET", "/bots/%C3%A9t%C3%A9", None),
        ("GET", f"{bot}/tasks/..%2F1", None),
        ("GET", f"{bot}/tasks/0", None),
        ("GET", f"{bot}/tasks/-1", None),
        ("GET", f"{bot}/tasks/{2**63}", None),
        ("GET", f"{bot}/tasks/1e3", None),
        ("DELETE", f"{bot}/tasks/{2**64}", None),
        ("POST", f"{bot}/replies/%2e%2e/approve", None),
        ("GET", "/static/../api/app.py", None),
        ("GET", "/static/%2e%2e/app.py", None),
        ("GET", "/static/..%2fapp.py", None),
        ("GET", "/static/%2e%2e%2f%2e%2e%2fpyproject.toml", None),
        # Huge or malformed pagination.
        ("GET", f"{bot}/executions?limit=1000000", None),
        ("GET", f"{bot}/executions?limit=-1", None),
        ("GET", f"{bot}/executions?limit=99999999999999999999999999", None),
        ("GET", f"{bot}/executions?limit=1e309", None),
        ("GET", f"{bot}/logs?limit=0", None),
        ("GET", f"{bot}/replies?limit=201", None),
        ("GET", f"{bot}/executions?cursor=" + "c" * 300, None),
        ("GET", f"{bot}/executions?cursor=not-a-cursor", None),
        ("GET", f"{bot}/logs?cursor=%00%01%02", None),
        ("GET", f"{bot}/executions?since=yesterday", None),
        ("GET", f"{bot}/executions?since=9999-99-99T99:99:99Z", None),
        ("GET", f"{bot}/executions?status=everything", None),
        ("GET", f"{bot}/executions?task_id=0", None),
    ]
    unexpected = await send_all(api, cases)
    assert not unexpected, unexpected
    after = {t: await chaos_pool.fetch(f"SELECT * FROM {t} ORDER BY 1") for t in TABLES}
    assert after == snapshot


async def test_numbers_and_booleans_sent_as_strings_are_refused(
    api: httpx.AsyncClient, chaos_pool: asyncpg.Pool
) -> None:
    """Promise (issue 7: wrong types get a 4xx and write nothing): a JSON string where the API
    declares a number or a boolean is a client error, as a list or an object there already is."""
    await seed(chaos_pool)
    before = await row_counts(chaos_pool)
    bot = f"/bots/{BOT}"
    cases: list[tuple[str, str, Any]] = [
        ("POST", f"{bot}/tasks", {"task_type": "noop", "interval_minutes": "5"}),
        ("POST", f"{bot}/tasks", {"task_type": "noop", "interval_minutes": 5, "priority": "10"}),
        ("POST", "/bots", {"id": "lax", "name": "lax", "dry_run": "true"}),
        ("PATCH", bot, {"llm_temperature": "1.5"}),
        ("PATCH", bot, {"approval_required": "yes"}),
    ]
    unexpected = await send_all(api, cases)
    assert not unexpected, unexpected
    assert await row_counts(chaos_pool) == before
