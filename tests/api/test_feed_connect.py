"""The WebSocket handshake: refused before the upgrade without the token; one poller per bot."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack

import asyncpg
import httpx
import pytest
import websockets
from fastapi import FastAPI
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from tests.api.conftest import API_TOKEN, api_settings
from tests.support.factories import insert_bot
from tests.support.servers import serve_address


async def _refused(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url, additional_headers=headers or {}):
            pass
    response = refused.value.response
    return response.status_code, json.loads(response.body or b"{}")


async def test_refused_before_upgrade_without_a_valid_token(
    bot_id: str, live_server: str, pool: asyncpg.Pool
) -> None:
    await insert_bot(pool, bot_id)
    base = f"ws://{live_server}/bots/{bot_id}/ws"
    for url, headers in [
        (base, None),
        (f"{base}?token=wrong", None),
        (base, {"Authorization": "Bearer wrong"}),
        (base, {"Authorization": API_TOKEN}),  # not a bearer credential
    ]:
        status, body = await _refused(url, headers)
        assert status == 401 and body == {"error": "missing or invalid token"}
    status, body = await _refused(f"ws://{live_server}/bots/nobody/ws?token={API_TOKEN}")
    assert status == 404 and body == {"error": "bot nobody not found"}


async def test_header_or_query_token_is_acked_for_a_bot_that_is_not_running(
    bot_id: str, live_server: str, pool: asyncpg.Pool
) -> None:
    await insert_bot(pool, bot_id)
    ack = {
        "type": "connection_ack",
        "message": "Connected to bot scheduler",
        "botId": bot_id,
        "initialSchedulerStatus": {"isRunning": False, "currentAlarmTime": None},
    }
    async with websockets.connect(f"ws://{live_server}/bots/{bot_id}/ws?token={API_TOKEN}") as socket:
        assert json.loads(await socket.recv()) == ack
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    async with websockets.connect(
        f"ws://{live_server}/bots/{bot_id}/ws", additional_headers=headers
    ) as socket:
        assert json.loads(await socket.recv()) == ack
        await socket.send(json.dumps({"type": "ping"}))
        assert json.loads(await socket.recv())["type"] == "pong"
        # A definition created through the API is announced even though no workflow runs.
        async with httpx.AsyncClient(base_url=f"http://{live_server}", headers=headers) as http:
            created = await http.post(
                f"/bots/{bot_id}/tasks", json={"task_type": "noop", "interval_minutes": 5}
            )
        update = json.loads(await socket.recv())
        assert {key: update[key] for key in ("type", "entityType", "action", "entityId", "botId")} == {
            "type": "entity_update",
            "entityType": "task_definition",
            "action": "created",
            "entityId": created.json()["id"],
            "botId": bot_id,
        }


async def test_fifty_clients_share_one_poller(
    bot_id: str, app: FastAPI, live_server: str, pool: asyncpg.Pool
) -> None:
    other_id = f"{bot_id}-other"
    await insert_bot(pool, bot_id)
    await insert_bot(pool, other_id)
    hub = app.state.api.hub
    started_before = hub.pollers_started
    async with AsyncExitStack() as stack:
        sockets = await asyncio.gather(
            *(
                stack.enter_async_context(
                    websockets.connect(f"ws://{live_server}/bots/{bot_id}/ws?token={API_TOKEN}")
                )
                for _ in range(50)
            )
        )
        acks = await asyncio.gather(*(socket.recv() for socket in sockets))
        assert all(json.loads(ack)["type"] == "connection_ack" for ack in acks)
        other = await stack.enter_async_context(
            websockets.connect(f"ws://{live_server}/bots/{other_id}/ws?token={API_TOKEN}")
        )
        await other.recv()
        assert set(hub.pollers) == {bot_id, other_id}
        assert len(hub.pollers[bot_id].clients) == 50
        assert hub.pollers_started - started_before == 2  # one for b's fifty clients, one for c
    # The last client gone, the poller stops.
    for _ in range(200):
        if not hub.pollers:
            break
        await asyncio.sleep(0.02)
    assert hub.pollers == {}


async def test_idle_connections_get_pings(
    bot_id: str, pool: asyncpg.Pool, dev_server_env: WorkflowEnvironment, task_queue: str
) -> None:
    await insert_bot(pool, bot_id)
    app = create_app(
        api_settings(task_queue), pool=pool, temporal_client=dev_server_env.client, feed_ping_interval=0.2
    )
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        address = await stack.enter_async_context(serve_address(app))
        socket = await stack.enter_async_context(
            websockets.connect(f"ws://{address}/bots/{bot_id}/ws?token={API_TOKEN}")
        )
        assert json.loads(await socket.recv())["type"] == "connection_ack"
        ping = json.loads(await asyncio.wait_for(socket.recv(), 30))
        assert ping["type"] == "ping" and ping["botId"] == bot_id
