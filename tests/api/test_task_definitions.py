"""Task definition validation and CRUD (database rules; the workflow side is in test_scheduler_routes)."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx

from tests.support.factories import insert_bot


async def _create(client: httpx.AsyncClient, bot_id: str = "b", **fields: Any) -> httpx.Response:
    return await client.post(
        f"/bots/{bot_id}/tasks", json={"task_type": "noop", "interval_minutes": 5, **fields}
    )


async def test_crud_round_trip(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    await insert_bot(pool, "b")
    created = await _create(
        client,
        name="pull",
        priority=10,
        rate_limit_endpoint="mentions",
        min_rate_limit_remaining=2,
        config={"max_results": 50},
    )
    assert created.status_code == 201, created.text
    task = created.json()
    assert task["bot_id"] == "b" and task["priority"] == 10 and task["config"] == {"max_results": 50}
    assert task["is_active"] is True and task["is_paused"] is False and task["consecutive_failures"] == 0

    assert [item["id"] for item in (await client.get("/bots/b/tasks")).json()] == [task["id"]]
    assert (await client.get(f"/bots/b/tasks/{task['id']}")).json() == task

    # Switch from an interval to a cron schedule: the merged definition must have exactly one.
    switched = await client.patch(
        f"/bots/b/tasks/{task['id']}", json={"cron_expression": "*/10 * * * *", "interval_minutes": None}
    )
    assert switched.status_code == 200, switched.text
    assert (
        switched.json()["cron_expression"] == "*/10 * * * *" and switched.json()["interval_minutes"] is None
    )
    both = await client.patch(f"/bots/b/tasks/{task['id']}", json={"interval_seconds": 30})
    assert both.status_code == 422 and "exactly one" in both.json()["error"]

    assert (await client.delete(f"/bots/b/tasks/{task['id']}")).status_code == 204
    assert (await client.get(f"/bots/b/tasks/{task['id']}")).status_code == 404
    assert (await client.delete(f"/bots/b/tasks/{task['id']}")).status_code == 404


async def test_validation_errors(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    await insert_bot(pool, "b")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"task_type": "launch_rockets"}, "unknown task type"),
        ({"interval_minutes": None}, "exactly one"),
        ({"interval_seconds": 10}, "exactly one"),
        ({"interval_minutes": None, "cron_expression": "every day"}, "invalid cron"),
        ({"interval_minutes": None, "cron_expression": "0 0 31 2 *"}, "never fires"),
        ({"interval_minutes": None, "cron_expression": "R * * * *"}, "random and hashed"),
        ({"interval_minutes": None, "cron_expression": "0 H * * *"}, "random and hashed"),
        ({"interval_minutes": 0}, "interval_minutes"),
        ({"priority": 5000}, "priority"),
        ({"rate_limit_endpoint": "delete_everything"}, "unknown rate-limit endpoint"),
        ({"max_retries": 101}, "max_retries"),
        ({"retry_backoff_coefficient": 0.5}, "retry_backoff_coefficient"),
        ({"retry_delay_minutes": 10, "max_retry_delay_minutes": 5}, "max_retry_delay_minutes"),
        ({"config": [1, 2]}, "config"),
        ({"next_planned_run_at": "2030-01-01T00:00:00"}, "time zone"),
        ({"surprise": True}, "surprise"),
    ]
    for fields, message in cases:
        response = await _create(client, **fields)
        assert response.status_code == 422, (fields, response.text)
        assert message in response.json()["error"], (fields, response.json())
    assert await pool.fetchval("SELECT count(*) FROM bot_task_definitions") == 0


async def test_dependencies_same_bot_and_acyclic(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    await insert_bot(pool, "b")
    await insert_bot(pool, "other")
    first = (await _create(client)).json()["id"]
    second = (await _create(client, dependencies=[first])).json()["id"]
    third = (await _create(client, dependencies=[second, first])).json()["id"]
    foreign = (await _create(client, "other")).json()["id"]

    cross_bot = await _create(client, dependencies=[foreign])
    assert (
        cross_bot.status_code == 422
        and f"{foreign} not a task definition of bot b" in cross_bot.json()["error"]
    )
    missing = await _create(client, dependencies=[987654])
    assert missing.status_code == 422

    cycle = await client.patch(f"/bots/b/tasks/{first}", json={"dependencies": [third]})
    assert cycle.status_code == 422 and "cycle" in cycle.json()["error"]
    self_loop = await client.patch(f"/bots/b/tasks/{first}", json={"dependencies": [first]})
    assert self_loop.status_code == 422 and "cycle" in self_loop.json()["error"]
    assert (await client.get(f"/bots/b/tasks/{first}")).json()["dependencies"] == []

    in_use = await client.delete(f"/bots/b/tasks/{first}")
    assert in_use.status_code == 409 and str(second) in in_use.json()["error"]
    assert (await client.delete(f"/bots/b/tasks/{third}")).status_code == 204
    assert (await client.delete(f"/bots/b/tasks/{second}")).status_code == 204
    assert (await client.delete(f"/bots/b/tasks/{first}")).status_code == 204


async def test_tasks_of_another_bot_are_not_reachable(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    await insert_bot(pool, "b")
    await insert_bot(pool, "other")
    foreign = (await _create(client, "other")).json()["id"]
    assert (await client.get(f"/bots/b/tasks/{foreign}")).status_code == 404
    assert (await client.patch(f"/bots/b/tasks/{foreign}", json={"priority": 1})).status_code == 404
    assert (await client.delete(f"/bots/b/tasks/{foreign}")).status_code == 404
    assert (await client.post(f"/bots/b/tasks/{foreign}/pause")).status_code == 404
    assert (await client.get("/bots/nobody/tasks")).status_code == 404
