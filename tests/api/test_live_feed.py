"""The WebSocket feed with the real workflow: start -> execution -> stop, each event once, in order."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import websockets

from tests.api.conftest import API_TOKEN
from tests.support.factories import insert_bot, insert_task

pytestmark = pytest.mark.usefixtures("worker")


async def _next(
    socket: websockets.ClientConnection, seen: list[dict[str, Any]], accept: Any
) -> dict[str, Any]:
    """Read events (recording each) until one satisfies `accept`; bounded."""
    async with asyncio.timeout(30):
        while True:
            event = json.loads(await socket.recv())
            seen.append(event)
            if accept(event):
                return dict(event)


async def test_start_execution_stop_sequence(
    bot_id: str, live_server: str, client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await insert_bot(pool, bot_id)
    task_id = await insert_task(
        pool,
        bot_id,
        "noop",
        interval_minutes=60,
        next_planned_run_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    seen: list[dict[str, Any]] = []
    async with websockets.connect(f"ws://{live_server}/bots/{bot_id}/ws?token={API_TOKEN}") as socket:
        ack = await _next(socket, seen, lambda event: True)
        assert ack["type"] == "connection_ack"
        assert ack["initialSchedulerStatus"] == {"isRunning": False, "currentAlarmTime": None}

        assert (await client.post(f"/bots/{bot_id}/start")).json()["isRunning"] is True
        running = await _next(
            socket, seen, lambda e: e["type"] == "scheduler_status_update" and e["isRunning"] is True
        )
        assert set(running) >= {"type", "botId", "isRunning", "currentAlarmTime", "timestamp"}
        assert running["botId"] == bot_id

        created = await _next(
            socket, seen, lambda e: e["type"] == "entity_update" and e["entityType"] == "task_execution"
        )
        assert set(created) >= {"type", "entityType", "action", "entityId", "botId", "timestamp"}
        assert created["action"] == "created" and created["botId"] == bot_id and created["taskId"] == task_id
        finished = await _next(
            socket,
            seen,
            lambda e: (
                e["type"] == "entity_update"
                and e["entityType"] == "task_execution"
                and e["action"] == "updated"
            ),
        )
        assert finished["change"] == "completed"
        execution_ids = {row["id"] for row in await _wait_for_execution(pool, task_id)}
        assert finished["entityId"] in execution_ids

        assert (await client.post(f"/bots/{bot_id}/stop")).json() == {"message": "Scheduler stopped"}
        await _next(
            socket, seen, lambda e: e["type"] == "scheduler_status_update" and e["isRunning"] is False
        )

    logs = [event for event in seen if event["type"] == "log"]
    for log in logs:
        assert set(log) >= {"type", "id", "timestamp", "level", "content", "botId"}
    seqs = [event["seq"] for event in seen if "seq" in event]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))  # in order, none twice
    assert not any(event["type"] == "resync" for event in seen)


async def _wait_for_execution(pool: asyncpg.Pool, task_id: int) -> list[asyncpg.Record]:
    async with asyncio.timeout(30):
        while True:
            rows = await pool.fetch(
                "SELECT id FROM bot_task_executions WHERE task_definition_id = $1", task_id
            )
            if rows:
                return rows
            await asyncio.sleep(0.05)
