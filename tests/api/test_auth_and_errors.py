"""Auth on every route, and the `{"error": ...}` shape of every kind of failure."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from tests.api.conftest import api_settings
from xbot.settings import SettingsError

# The OAuth callback is reached by the browser coming back from X: its single-use `state` is the
# credential (tests/api/test_connect.py refuses wrong, reused and expired ones).
PUBLIC = {"/healthz", "/oauth/x/callback"}


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def _protected_routes(app: FastAPI) -> list[tuple[str, str]]:
    routes: list[tuple[str, str]] = []
    for path, operations in app.openapi()["paths"].items():
        if path not in PUBLIC:
            routes.extend((method.upper(), _concrete(path)) for method in operations)
    return routes


async def test_every_route_but_healthz_requires_the_token(
    app: FastAPI, anonymous: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    routes = _protected_routes(app)
    assert len(routes) >= 20  # the whole API, not an empty loop
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
            response = await anonymous.request(method, path, headers=headers, json={})
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json() == {"error": response.json()["error"]}
            assert response.headers["www-authenticate"] == "Bearer"
    # Nothing was written by refused requests.
    assert await pool.fetchval("SELECT count(*) FROM bots") == 0


async def test_healthz_needs_no_token(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "temporal": "ok"}


async def test_healthz_names_what_is_down(database_url: str, task_queue: str) -> None:
    # Temporal on a port nothing listens on; no pool (as if the database never came up).
    settings = api_settings(task_queue, TEMPORAL_ADDRESS="127.0.0.1:1", DATABASE_URL=database_url)
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http:
        response = await http.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {
        "error": "database and temporal down",
        "status": "unavailable",
        "database": "down",
        "temporal": "down",
    }


async def test_temporal_down_gives_503_with_error(
    pool: asyncpg.Pool, task_queue: str, auth: dict[str, str]
) -> None:
    app = create_app(api_settings(task_queue, TEMPORAL_ADDRESS="127.0.0.1:1"), pool=pool)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api", headers=auth
    ) as http:
        await http.post("/bots", json={"id": "b1", "name": "one"})
        response = await http.post("/bots/b1/start")
        assert response.status_code == 503
        assert response.json() == {"error": "Temporal is unavailable"}
        health = await http.get("/healthz")
        assert health.status_code == 503
        assert health.json()["temporal"] == "down" and health.json()["database"] == "ok"
        # Routes that only read the database still answer.
        listed = await http.get("/bots")
        assert listed.status_code == 200
        assert listed.json()[0]["isRunning"] is None  # unknown, not a guess


async def test_database_down_gives_503_with_error(
    empty_database_url: str, task_queue: str, auth: dict[str, str], dev_server_env: object
) -> None:
    from xbot.storage.migrate import migrate
    from xbot.storage.pool import create_pool

    await migrate(empty_database_url)
    db_pool = await create_pool(empty_database_url)
    app = create_app(api_settings(task_queue), pool=db_pool, temporal_client=dev_server_env.client)  # type: ignore[attr-defined]
    await db_pool.close()  # every query now fails as if the server had gone away
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api", headers=auth
    ) as http:
        response = await http.get("/bots")
        assert response.status_code == 503
        assert response.json() == {"error": "database is unavailable"}
        health = await http.get("/healthz")
        assert health.status_code == 503 and health.json()["database"] == "down"


async def test_error_shapes(client: httpx.AsyncClient) -> None:
    assert (await client.post("/bots", json={"id": "b", "name": "b"})).status_code == 201
    cases = [
        (await client.get("/nowhere"), 404),
        (await client.put("/bots"), 405),
        (await client.get("/bots/missing"), 404),
        (await client.post("/bots", json={"id": "../etc", "name": "x"}), 422),
        (await client.post("/bots", json={"id": "ok", "name": "x", "unknown": 1}), 422),
        (await client.post("/bots", json={"id": "ok", "name": 5}), 422),
        (await client.post("/bots", content=b"{not json", headers={"content-type": "application/json"}), 422),
        (await client.get("/bots/b/executions", params={"limit": 100000}), 422),
        (await client.get("/bots/b/executions", params={"since": "yesterday"}), 422),
        (await client.get("/bots/b/logs", params={"level": "loud"}), 422),
        (await client.get("/bots/b/tasks/0"), 422),
        (await client.get("/bots/b/tasks/99999999999999999999"), 422),
        (await client.get("/bots/a%2F..%2Fb"), 404),
    ]
    for response, status in cases:
        assert response.status_code == status, response.text
        body = response.json()
        assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]
    assert "unknown" in cases[4][0].json()["error"]


async def test_oversized_body_is_refused_before_anything_is_written(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    huge = {"id": "big", "name": "big", "persona_prompt": "x" * 300_000}
    response = await client.post("/bots", json=huge)
    assert response.status_code == 413
    assert "error" in response.json()

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(40):
            yield b" " * 10_000

    streamed = await client.post("/bots", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert await pool.fetchval("SELECT count(*) FROM bots") == 0


def test_refuses_to_start_without_a_token_outside_development(task_queue: str) -> None:
    settings = api_settings(task_queue).model_copy(update={"api_token": None})
    with pytest.raises(SettingsError, match="API_TOKEN"):
        create_app(settings)
    development = settings.model_copy(update={"xbot_env": "development"})
    assert create_app(development).state.api.api_token  # dev generates one


async def test_openapi_and_docs_are_served(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert "/bots/{botId}/tasks/{taskId}/run" in schema["paths"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
