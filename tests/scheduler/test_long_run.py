"""A bot running for a long time keeps every run's history small (continue-as-new)."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.handlers.noop import NoopHandler
from tests.scheduler.helpers import advance, insert_bot, insert_task, running_worker, start_bot, status

# A day of minutely runs (1,440 executions through the worker and PostgreSQL, ~1 min): the soak
# test of the system tier.
pytestmark = pytest.mark.system

# Temporal warns at 10,240 events per run (and refuses at 51,200).
HISTORY_WARNING_LIMIT = 10_240
SIMULATED_DAYS = float(os.environ.get("XBOT_LONG_RUN_DAYS", "1"))


async def run_histories(client: Client, workflow_id: str, first_run_id: str) -> list[Any]:
    """Every run's history, following the continue-as-new chain from the first run."""
    histories = []
    run_id: str | None = first_run_id
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        histories.append(history)
        last = history.events[-1]
        continued = last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
        run_id = (
            last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
            if continued
            else None
        )
    return histories


async def test_a_minutely_bot_keeps_every_run_under_the_history_limit(
    env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    bot = await insert_bot(pool)
    now = await env.get_current_time()
    task = await insert_task(pool, bot, "noop", next_planned_run_at=now + timedelta(minutes=1))
    async with running_worker(env.client, pool, task_queue, {"noop": NoopHandler()}):
        handle = await start_bot(env.client, bot, task_queue)
        first_run_id = (await handle.describe()).run_id
        began = time.monotonic()
        await advance(env, timedelta(days=SIMULATED_DAYS), step=timedelta(hours=1))
        elapsed = time.monotonic() - began
        final = await status(handle)
    histories = await run_histories(env.client, bot, first_run_id)
    executions = await pool.fetchval(
        "SELECT count(*) FROM bot_task_executions WHERE task_definition_id = $1 AND status = 'completed'",
        task,
    )
    expected = int(SIMULATED_DAYS * 24 * 60)
    assert expected - 2 <= executions <= expected
    lengths = [len(h.events) for h in histories]
    assert len(histories) >= 2  # it did continue as new, and kept going
    assert max(lengths) < HISTORY_WARNING_LIMIT
    per_execution = sum(lengths) / executions
    print(
        f"\n{executions} executions in {elapsed:.1f} s, {len(histories)} runs, "
        f"longest run {max(lengths)} events, {per_execution:.2f} events per execution"
    )
    # A bare timer + activity loop costs 11 events per execution; we allow two more.
    assert per_execution <= 13
    assert final.isRunning and final.tasks[0].consecutiveFailures == 0
