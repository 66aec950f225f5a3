"""`GET /metrics`: executions by task type and outcome, start lateness, running bots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.factories import insert_bot, insert_execution, insert_task
from tests.support.waiting import eventually

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.usefixtures("worker")
async def test_metrics_from_the_database_and_temporal(
    client: httpx.AsyncClient, pool: asyncpg.Pool, bot_id: str
) -> None:
    await insert_bot(pool, bot_id)
    pull = await insert_task(pool, bot_id, "pull_mentions")
    for lateness_ms, status in [(2, "completed"), (40, "completed"), (3000, "failed")]:
        await insert_execution(
            pool,
            bot_id,
            pull,
            status,
            T0 + timedelta(milliseconds=lateness_ms),
            task_type="pull_mentions",
            due_at=T0,
        )
    # A retry starts late on purpose: not counted as lateness.
    await insert_execution(
        pool,
        bot_id,
        pull,
        "completed",
        T0 + timedelta(minutes=5),
        task_type="pull_mentions",
        due_at=T0,
        attempt=2,
    )

    response = await client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    assert (
        samples[("xbot_task_executions_total", (("status", "completed"), ("task_type", "pull_mentions")))]
        == 3
    )
    assert (
        samples[("xbot_task_executions_total", (("status", "failed"), ("task_type", "pull_mentions")))] == 1
    )
    lateness = "xbot_task_start_lateness_seconds"
    assert samples[(f"{lateness}_count", (("task_type", "pull_mentions"),))] == 3
    assert samples[(f"{lateness}_bucket", (("le", "0.005"), ("task_type", "pull_mentions")))] == 1
    assert samples[(f"{lateness}_bucket", (("le", "0.05"), ("task_type", "pull_mentions")))] == 2
    assert samples[(f"{lateness}_bucket", (("le", "+Inf"), ("task_type", "pull_mentions")))] == 3
    assert samples[("xbot_temporal_up", ())] == 1

    await client.post(f"/bots/{bot_id}/tasks", json={"task_type": "noop", "interval_minutes": 60})
    assert (await client.post(f"/bots/{bot_id}/start")).json()["isRunning"] is True

    async def running_bots() -> bool:  # visibility is eventually consistent
        current = _samples((await client.get("/metrics")).text)
        return (
            current.get(("xbot_running_bots", ())) == 1 and current[("xbot_bots_scheduler_enabled", ())] == 1
        )

    await eventually(running_bots, what="xbot_running_bots to count the started bot")
