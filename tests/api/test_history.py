"""Executions and logs (filters, cursor pagination) and per-task statistics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from tests.support.factories import insert_bot, insert_execution, insert_log, insert_task

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def _all_pages(client: httpx.AsyncClient, path: str, **params: int) -> list[list[int]]:
    pages: list[list[int]] = []
    cursor = None
    while True:
        query: dict[str, str | int] = {**params, **({"cursor": cursor} if cursor else {})}
        body = (await client.get(path, params=query)).json()
        pages.append([item["id"] for item in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None or len(pages) > 50:
            return pages


async def test_executions_filters_and_pagination(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    await insert_bot(pool, "b")
    await insert_bot(pool, "other")
    pull = await insert_task(pool, "b", "pull_mentions")
    reply = await insert_task(pool, "b", "reply_to_mentions")
    ids = []
    for minute in range(7):
        status = "failed" if minute % 3 == 0 else "completed"
        ids.append(await insert_execution(pool, "b", pull, status, T0 + timedelta(minutes=minute)))
    # Same start time as another row: the id breaks the tie, so pages neither repeat nor skip it.
    ids.append(await insert_execution(pool, "b", reply, "completed", T0 + timedelta(minutes=3)))
    await insert_execution(pool, "other", None, "completed", T0)

    pages = await _all_pages(client, "/bots/b/executions", limit=3)
    assert [len(page) for page in pages] == [3, 3, 2]
    flat = [item for page in pages for item in page]
    assert sorted(flat) == sorted(ids)  # every row once, the other bot's never
    newest_first = (await client.get("/bots/b/executions", params={"limit": 200})).json()["items"]
    assert [item["id"] for item in newest_first] == flat
    starts = [item["started_at"] for item in newest_first]
    assert starts == sorted(starts, reverse=True)

    by_task = (await client.get("/bots/b/executions", params={"task_id": reply})).json()["items"]
    assert [item["id"] for item in by_task] == [ids[-1]]
    failed = (await client.get("/bots/b/executions", params={"status": "failed"})).json()["items"]
    assert {item["status"] for item in failed} == {"failed"} and len(failed) == 3
    window = (
        await client.get(
            "/bots/b/executions",
            params={
                "since": (T0 + timedelta(minutes=2)).isoformat(),
                "until": (T0 + timedelta(minutes=4)).isoformat(),
            },
        )
    ).json()["items"]
    assert len(window) == 3  # minutes 2, 3 and the tie at 3; until is exclusive

    naive = await client.get("/bots/b/executions", params={"since": "2026-01-01T00:00:00"})
    assert naive.status_code == 422 and "time zone" in naive.json()["error"]


async def test_logs_minimum_level_and_pagination(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    await insert_bot(pool, "b")
    levels = ["debug", "info", "warn", "error", "info", "error"]
    for index, level in enumerate(levels):
        await insert_log(pool, "b", level, f"line {index}", T0 + timedelta(seconds=index))
    everything = (await client.get("/bots/b/logs")).json()["items"]
    assert [item["content"] for item in everything] == [f"line {index}" for index in reversed(range(6))]
    warnings = (await client.get("/bots/b/logs", params={"level": "warn"})).json()["items"]
    assert [item["level"] for item in warnings] == ["error", "error", "warn"]
    pages = await _all_pages(client, "/bots/b/logs", limit=4)
    assert [len(page) for page in pages] == [4, 2]


async def test_stats_per_task(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    await insert_bot(pool, "b")
    pull = await insert_task(pool, "b", "pull_mentions", name="pull")
    idle = await insert_task(pool, "b", "user_fetch")
    for index, duration in enumerate([100, 200, 300, 400, 1000]):
        await insert_execution(
            pool, "b", pull, "completed", T0 + timedelta(minutes=index), duration_ms=duration
        )
    await insert_execution(pool, "b", pull, "failed", T0 + timedelta(minutes=10), duration_ms=5, error="boom")
    await insert_execution(
        pool, "b", pull, "retrying", T0 + timedelta(minutes=9), duration_ms=5, error="older"
    )

    stats = (await client.get("/bots/b/stats")).json()
    by_id = {task["task_id"]: task for task in stats["tasks"]}
    assert by_id[pull]["runs"] == 7 and by_id[pull]["completed"] == 5 and by_id[pull]["failed"] == 1
    assert by_id[pull]["success_rate"] == 5 / 6
    assert by_id[pull]["p50_duration_ms"] == 300
    assert 400 < by_id[pull]["p95_duration_ms"] <= 1000
    assert by_id[pull]["last_error"] == "boom"
    assert (
        by_id[idle]["runs"] == 0 and by_id[idle]["success_rate"] is None and by_id[idle]["last_error"] is None
    )

    recent = (
        await client.get("/bots/b/stats", params={"since": (T0 + timedelta(minutes=4)).isoformat()})
    ).json()
    assert {task["task_id"]: task["runs"] for task in recent["tasks"]}[pull] == 3
