"""Scheduler control through the API with the real BotScheduler workflow on the dev server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from tests.support.factories import insert_bot
from tests.support.waiting import eventually

pytestmark = pytest.mark.usefixtures("worker")

FAR = (datetime.now(UTC) + timedelta(days=30)).isoformat()


async def _task(client: httpx.AsyncClient, bot_id: str, **fields: Any) -> dict[str, Any]:
    body = {"task_type": "noop", "interval_minutes": 60, **fields}
    response = await client.post(f"/bots/{bot_id}/tasks", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def _executions(pool: asyncpg.Pool, task_id: int) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM bot_task_executions WHERE task_definition_id = $1", task_id)


async def test_start_stop_status_with_the_seed_semantics(
    bot_id: str, client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await insert_bot(pool, bot_id)
    nothing = await client.post(f"/bots/{bot_id}/start")
    assert nothing.status_code == 200
    assert nothing.json() == {"message": "No tasks to schedule", "isRunning": False}
    assert await pool.fetchval("SELECT scheduler_enabled FROM bots WHERE id = $1", bot_id) is False

    task = await _task(client, bot_id, next_planned_run_at=FAR)
    started = await client.post(f"/bots/{bot_id}/start")
    assert started.json() == {"message": "Scheduler started", "isRunning": True}
    assert await pool.fetchval("SELECT scheduler_enabled FROM bots WHERE id = $1", bot_id) is True
    status = (await client.get(f"/bots/{bot_id}/status")).json()
    assert status["isRunning"] is True and status["healed"] is False and status["workflowStatus"] == "RUNNING"
    assert [item["id"] for item in status["tasks"]] == [task["id"]]
    assert status["nextAlarmTime"] is not None
    # A task that never ran has its due time from the workflow (its row has none until the first run).
    unplanned = await _task(client, bot_id)
    await eventually(
        lambda: client.get(f"/bots/{bot_id}/status"),
        lambda response: (
            all(item["nextDueAt"] is not None for item in response.json()["tasks"])
            and unplanned["id"] in [item["id"] for item in response.json()["tasks"]]
        ),
        timeout=10,
    )

    again = await client.post(f"/bots/{bot_id}/start")
    assert again.status_code == 400 and again.json() == {"error": "Scheduler is already running"}
    listed = (await client.get("/bots")).json()
    assert listed[0]["isRunning"] is True

    stopped = await client.post(f"/bots/{bot_id}/stop")
    assert stopped.json() == {"message": "Scheduler stopped"}
    assert (await client.get(f"/bots/{bot_id}/status")).json()["isRunning"] is False
    assert await pool.fetchval("SELECT scheduler_enabled FROM bots WHERE id = $1", bot_id) is False
    twice = await client.post(f"/bots/{bot_id}/stop")
    assert twice.status_code == 400 and twice.json() == {"error": "Scheduler is not running"}

    restarted = await client.post(f"/bots/{bot_id}/start")  # the idle workflow resumes
    assert restarted.json() == {"message": "Scheduler started", "isRunning": True}


async def test_status_heals_a_bot_whose_workflow_is_gone(
    bot_id: str, client: httpx.AsyncClient, pool: asyncpg.Pool, dev_server_env: WorkflowEnvironment
) -> None:
    await insert_bot(pool, bot_id)
    await _task(client, bot_id, next_planned_run_at=FAR)
    assert (await client.post(f"/bots/{bot_id}/start")).json()["isRunning"] is True
    handle = dev_server_env.client.get_workflow_handle(bot_id)
    await handle.terminate(reason="test: lost workflow")

    healed = (await client.get(f"/bots/{bot_id}/status")).json()
    assert healed["healed"] is True and healed["isRunning"] is True and healed["workflowStatus"] == "RUNNING"
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    assert (await client.get(f"/bots/{bot_id}/status")).json()[
        "healed"
    ] is False  # healed once, not every time


async def test_task_changes_reach_the_running_workflow(
    bot_id: str, client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await insert_bot(pool, bot_id)
    await _task(client, bot_id, next_planned_run_at=FAR)
    await client.post(f"/bots/{bot_id}/start")

    # A new definition due now is picked up at once (reload_tasks), not at the next alarm a month away.
    due_now = await _task(client, bot_id, next_planned_run_at=datetime.now(UTC).isoformat())
    await eventually(lambda: _executions(pool, due_now["id"]), what="the new task to run")

    async def listed_in_status() -> bool:
        status = (await client.get(f"/bots/{bot_id}/status")).json()
        return {item["id"] for item in status["tasks"]} >= {due_now["id"]}

    await eventually(listed_in_status, what="status to list the new task")

    assert (await client.delete(f"/bots/{bot_id}/tasks/{due_now['id']}")).status_code == 204

    async def gone_from_status() -> bool:
        status = (await client.get(f"/bots/{bot_id}/status")).json()
        return due_now["id"] not in {item["id"] for item in status["tasks"]}

    await eventually(gone_from_status, what="the deleted task to leave the plan")


async def test_run_now_pause_and_resume(bot_id: str, client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    await insert_bot(pool, bot_id)
    task = await _task(client, bot_id, next_planned_run_at=FAR)
    not_running = await client.post(f"/bots/{bot_id}/tasks/{task['id']}/run")
    assert not_running.status_code == 400 and not_running.json() == {"error": "Scheduler is not running"}
    assert (await client.post(f"/bots/{bot_id}/tasks/999999/run")).status_code == 404

    await client.post(f"/bots/{bot_id}/start")
    run = await client.post(f"/bots/{bot_id}/tasks/{task['id']}/run")
    assert run.status_code == 202 and run.json() == {"message": "Task run requested", "taskId": task["id"]}
    await eventually(lambda: _executions(pool, task["id"]), what="the run-now execution")

    paused = await client.post(f"/bots/{bot_id}/tasks/{task['id']}/pause")
    assert paused.status_code == 200 and paused.json()["is_paused"] is True

    async def state() -> str:
        status = (await client.get(f"/bots/{bot_id}/status")).json()
        return str(next(item["state"] for item in status["tasks"] if item["id"] == task["id"]))

    await eventually(lambda: _is(state, "paused"), what="the task to show as paused")
    resumed = await client.post(f"/bots/{bot_id}/tasks/{task['id']}/resume")
    assert resumed.json()["is_paused"] is False
    await eventually(lambda: _isnt(state, "paused"), what="the task to leave the paused state")


async def _is(read: Any, expected: str) -> bool:
    return bool(await read() == expected)


async def _isnt(read: Any, unexpected: str) -> bool:
    return bool(await read() != unexpected)


async def test_delete_stops_the_workflow_first(
    bot_id: str, client: httpx.AsyncClient, pool: asyncpg.Pool, dev_server_env: WorkflowEnvironment
) -> None:
    await insert_bot(pool, bot_id)
    await _task(client, bot_id, next_planned_run_at=FAR)
    await client.post(f"/bots/{bot_id}/start")
    assert (await client.delete(f"/bots/{bot_id}")).status_code == 204
    description = await dev_server_env.client.get_workflow_handle(bot_id).describe()
    assert description.status != WorkflowExecutionStatus.RUNNING
    assert await pool.fetchval("SELECT count(*) FROM bots") == 0
    assert (await client.get(f"/bots/{bot_id}/status")).status_code == 404
