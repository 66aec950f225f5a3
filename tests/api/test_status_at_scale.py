"""Issue 12: status without a query, start/stop as updates, one owner of the desired state, paging.

Real BotScheduler workflows on the dev server; no mocks.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from tests.api.conftest import api_settings
from tests.support.factories import insert_bot, insert_task
from tests.support.waiting import eventually
from workflows.models import SIGNAL_START, SIGNAL_STOP, UPDATE_START, ControlAnswer

FAR = datetime.now(UTC) + timedelta(days=30)


async def _enabled(pool: asyncpg.Pool, bot_id: str) -> bool:
    return bool(await pool.fetchval("SELECT scheduler_enabled FROM bots WHERE id = $1", bot_id))


async def _within(seconds: float, check: Any, what: str) -> None:
    """`check()` holds within `seconds` (polled every 50 ms)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        await asyncio.sleep(0.05)


@pytest.mark.usefixtures("worker")
async def test_a_cli_stop_signal_shows_in_the_api_within_a_second(
    bot_id: str,
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    dev_server_env: WorkflowEnvironment,
    task_queue: str,
) -> None:
    await insert_bot(pool, bot_id)
    await insert_task(pool, bot_id, next_planned_run_at=FAR)
    assert (await client.post(f"/bots/{bot_id}/start")).json()["isRunning"] is True
    handle = dev_server_env.client.get_workflow_handle(bot_id)

    async def running_in_list() -> bool:
        listed = (await client.get("/bots")).json()[0]
        due = listed["nextAlarmTime"]
        return bool(
            listed["isRunning"] is True
            and due
            and abs(datetime.fromisoformat(due) - FAR) < timedelta(seconds=1)
        )

    await _within(1.0, running_in_list, "GET /bots shows the running bot and its next due time")

    await handle.signal(SIGNAL_STOP)  # what `temporal workflow signal --name stop` sends

    async def stopped_in_status() -> bool:
        body = (await client.get(f"/bots/{bot_id}/status")).json()
        return body["isRunning"] is False and body["schedulerEnabled"] is False

    async def stopped_in_list() -> bool:
        listed = (await client.get("/bots")).json()
        return bool(listed[0]["isRunning"] is False and listed[0]["scheduler_enabled"] is False)

    await _within(1.0, stopped_in_status, "status shows the CLI stop")
    await _within(1.0, stopped_in_list, "GET /bots shows the CLI stop")
    assert await _enabled(pool, bot_id) is False  # the column mirrors the workflow

    # Stopped by the CLI, then its workflow is lost: it must not be healed back to running.
    await handle.terminate(reason="test: lost workflow")
    await asyncio.sleep(0.3)  # past the reuse of the last answer
    body = (await client.get(f"/bots/{bot_id}/status")).json()
    assert body["healed"] is False and body["isRunning"] is False and body["workflowStatus"] == "TERMINATED"

    # Started by a CLI signal-with-start: shown at once, and healed after a loss.
    await dev_server_env.client.start_workflow(
        "BotScheduler",
        {"bot_id": bot_id},
        id=bot_id,
        task_queue=task_queue,
        start_signal=SIGNAL_START,
    )

    async def running_in_status() -> bool:
        body = (await client.get(f"/bots/{bot_id}/status")).json()
        return bool(body["isRunning"] is True and body["schedulerEnabled"] is True)

    await _within(1.0, running_in_status, "status shows the CLI start")
    assert await _enabled(pool, bot_id) is True
    await handle.terminate(reason="test: lost workflow again")

    async def healed() -> bool:
        body = (await client.get(f"/bots/{bot_id}/status")).json()
        return bool(
            body["healed"] is True and body["isRunning"] is True and body["workflowStatus"] == "RUNNING"
        )

    await _within(1.0, healed, "status heals the bot a CLI signal started")


@pytest.mark.usefixtures("worker")
async def test_start_and_stop_are_updates_that_answer_with_the_workflows_word(
    bot_id: str, client: httpx.AsyncClient, pool: asyncpg.Pool, dev_server_env: WorkflowEnvironment
) -> None:
    await insert_bot(pool, bot_id)
    never = await client.post(f"/bots/{bot_id}/stop")
    assert never.status_code == 400 and never.json() == {"error": "Scheduler is not running"}
    task_id = await insert_task(pool, bot_id, next_planned_run_at=FAR)

    started = await client.post(f"/bots/{bot_id}/start")
    assert started.status_code == 200 and started.json() == {
        "message": "Scheduler started",
        "isRunning": True,
    }
    # Answered after the definitions loaded: the very next status agrees, tasks included.
    status = (await client.get(f"/bots/{bot_id}/status")).json()
    assert status["isRunning"] is True and [task["id"] for task in status["tasks"]] == [task_id]
    again = await client.post(f"/bots/{bot_id}/start")
    assert again.status_code == 400 and again.json() == {"error": "Scheduler is already running"}

    stopped = await client.post(f"/bots/{bot_id}/stop")
    assert stopped.json() == {"message": "Scheduler stopped"}
    assert (await client.get(f"/bots/{bot_id}/status")).json()["isRunning"] is False
    twice = await client.post(f"/bots/{bot_id}/stop")
    assert twice.status_code == 400 and twice.json() == {"error": "Scheduler is not running"}

    handle = dev_server_env.client.get_workflow_handle(bot_id)
    kinds = [event.event_type async for event in handle.fetch_history_events()]
    assert kinds.count(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED) == 4
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED not in kinds  # no signal, no polling

    # The update itself answers what the workflow did.
    answer = await handle.execute_update(UPDATE_START, result_type=ControlAnswer)
    assert answer == ControlAnswer(changed=True, isRunning=True, tasks=1)

    # A closed workflow: stop says not running.
    await handle.terminate(reason="test")
    await pool.execute("UPDATE bots SET scheduler_enabled = false WHERE id = $1", bot_id)
    closed = await client.post(f"/bots/{bot_id}/stop")
    assert closed.status_code == 400 and closed.json() == {"error": "Scheduler is not running"}


@pytest.mark.usefixtures("worker")
async def test_concurrent_status_calls_for_one_bot_share_one_read(
    bot_id: str, client: httpx.AsyncClient, pool: asyncpg.Pool, app: FastAPI
) -> None:
    await insert_bot(pool, bot_id)
    await insert_task(pool, bot_id, next_planned_run_at=FAR)
    await client.post(f"/bots/{bot_id}/start")
    flights = app.state.api.status_flights
    before = flights.shared
    answers = await asyncio.gather(*(client.get(f"/bots/{bot_id}/status") for _ in range(50)))
    assert all(answer.status_code == 200 and answer.json()["isRunning"] for answer in answers)
    assert flights.shared - before > 0


@pytest.fixture
async def own_worker(
    pool: asyncpg.Pool, dev_server_env: WorkflowEnvironment, task_queue: str
) -> AsyncIterator[Any]:
    """A worker the test can stop (an outage)."""
    from launch.worker import build_worker

    async with httpx.AsyncClient(timeout=10) as http:
        yield build_worker(dev_server_env.client, pool, api_settings(task_queue), task_queue, http)


async def test_status_during_a_worker_outage_answers_from_what_is_stored(
    bot_id: str,
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    dev_server_env: WorkflowEnvironment,
    own_worker: Any,
) -> None:
    await insert_bot(pool, bot_id)
    task_id = await insert_task(pool, bot_id, next_planned_run_at=FAR)
    async with own_worker:
        assert (await client.post(f"/bots/{bot_id}/start")).json()["isRunning"] is True
    # The worker is gone; the workflow now has work nobody picks up.
    await dev_server_env.client.get_workflow_handle(bot_id).signal("reload_tasks")

    async def unreachable() -> dict[str, Any] | None:
        response = await client.get(f"/bots/{bot_id}/status")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body if body["schedulerReachable"] is False else None

    body = await eventually(unreachable, timeout=15, what="status to say the scheduler is unreachable")
    assert body["isRunning"] is True and body["workflowStatus"] == "RUNNING"
    assert [task["id"] for task in body["tasks"]] == [task_id]  # from the database
    assert "unreachable" in body["message"]
    assert body["healed"] is False


async def test_get_bots_is_paginated(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    prefix = f"page-{uuid.uuid4().hex[:6]}"
    ids = [f"{prefix}-{index:02d}" for index in range(7)]
    for bot_id in ids:
        await insert_bot(pool, bot_id)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        response = await client.get("/bots", params=params)
        assert response.status_code == 200
        page = response.json()
        assert len(page) <= 3
        seen += [bot["id"] for bot in page]
        assert all(bot["isRunning"] is False for bot in page)  # no workflow: one list call said so
        pages += 1
        cursor = response.headers.get("X-Next-Cursor")
        if cursor is None:
            break
        assert 'rel="next"' in response.headers["Link"]
    assert seen == sorted(seen) and set(ids) <= set(seen) and pages >= 3
    assert (await client.get("/bots", params={"cursor": "***"})).status_code == 400
    assert (await client.get("/bots", params={"limit": 0})).status_code == 422
    missing = await client.get(f"/bots/{prefix}-missing/status")
    assert missing.status_code == 404 and missing.json() == {"error": f"bot {prefix}-missing not found"}
