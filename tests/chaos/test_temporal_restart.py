"""The Temporal dev server dies (SIGKILL) and comes back on the same SQLite file, while some bots
sleep until a future due time and others are in the middle of a task."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import Client

from tests.chaos.conftest import Fakes
from tests.chaos.helpers import (
    WORKER_READY,
    add_task,
    eventually,
    open_executions,
    service_env,
    start_scheduler,
    status,
    stop_and_heal,
    wait_for_log,
    worker_proc,
)
from tests.chaos.infra import RestartableTemporal, processes
from tests.conftest import TEST_TOKEN_KEY
from tests.support.factories import insert_bot
from workflows.models import SchedulerOptions

pytestmark = [pytest.mark.chaos, pytest.mark.system]

INTERVAL = 60
SLEEPERS_DUE_IN = 15  # seconds: long enough to restart the server before they wake
BUSY_SECONDS = 6  # each busy bot's task runs this long; the restart lands in the middle


async def test_bots_resume_with_their_due_times_after_a_temporal_restart(
    chaos_pool: asyncpg.Pool,
    chaos_database_url: str,
    chaos_temporal: RestartableTemporal,
    chaos_client: Client,
    chaos_queue: str,
    fakes: Fakes,
    scale: int,
    tmp_path: Path,
) -> None:
    """Promise: schedules are durable. After the Temporal server is killed and restarted on the same
    database, every bot's workflow is still there and running; sleeping bots wake at the due time
    they had before (their execution's due time is the one the status showed before the restart, and
    the next one is one interval later); tasks that were running when the server died complete, and
    their next due time is kept too. Nothing is left `started`."""
    prefix = f"tr-{chaos_queue[-6:]}"
    sleepers, busy = {}, {}
    for n in range(2 * scale):
        bot = f"{prefix}-sleep{n}"
        await insert_bot(chaos_pool, bot)
        sleepers[bot] = await add_task(chaos_pool, bot, "noop", interval_seconds=INTERVAL)
        bot = f"{prefix}-busy{n}"
        await insert_bot(chaos_pool, bot)
        busy[bot] = await add_task(
            chaos_pool, bot, "noop", interval_seconds=INTERVAL, config={"sleep_seconds": BUSY_SECONDS}
        )
    bots = [*sleepers, *busy]

    env = service_env(fakes, chaos_database_url, chaos_temporal.address, chaos_queue, TEST_TOKEN_KEY)
    options = SchedulerOptions()  # heartbeats may pause for 10 s: longer than the restart
    with processes() as procs:
        worker = worker_proc("worker", env, tmp_path)
        procs.append(worker)
        worker.start()
        await wait_for_log(worker, WORKER_READY)
        # The sleepers' first due time is set now, so that the restart surely comes before it.
        await chaos_pool.execute(
            "UPDATE bot_task_definitions SET next_planned_run_at = now() + $2::interval WHERE id = ANY($1)",
            list(sleepers.values()),
            timedelta(seconds=SLEEPERS_DUE_IN),
        )
        for bot in bots:
            await start_scheduler(chaos_client, bot, chaos_queue, options)

        async def busy_started() -> int:
            value: int = await chaos_pool.fetchval(
                "SELECT count(*) FROM bot_task_executions WHERE status = 'started' AND task_definition_id = ANY($1)",
                list(busy.values()),
            )
            return value

        await eventually(busy_started, lambda n: n == len(busy), 30, "every busy bot's task running")
        planned = {bot: (await status(chaos_client, bot)).tasks[0].nextDueAt for bot in sleepers}
        assert all(due is not None for due in planned.values())

        killed_at = datetime.now(UTC)
        assert all(due is not None and due > killed_at + timedelta(seconds=3) for due in planned.values()), (
            "setup too slow: the sleepers would wake before the restart"
        )
        restarted_at = time.monotonic()
        chaos_temporal.proc.kill(signal.SIGKILL)
        await asyncio.sleep(1.0)  # down for a moment, with attempts still running on the worker
        chaos_temporal.start()
        print(f"Temporal back after {time.monotonic() - restarted_at:.1f} s")
        back = datetime.now(UTC)
        assert all(due is not None and due > back for due in planned.values()), (
            "restart too slow for this test"
        )

        async def completed(task_ids: list[int]) -> dict[int, list[asyncpg.Record]]:
            rows = await chaos_pool.fetch(
                "SELECT task_definition_id, due_at, started_at FROM bot_task_executions"
                " WHERE status = 'completed' AND task_definition_id = ANY($1) ORDER BY id",
                task_ids,
            )
            found: dict[int, list[asyncpg.Record]] = {}
            for row in rows:
                found.setdefault(row["task_definition_id"], []).append(row)
            return found

        try:
            busy_done = await eventually(
                lambda: completed(list(busy.values())), lambda f: len(f) == len(busy), 60, "busy tasks done"
            )
            sleeper_done = await eventually(
                lambda: completed(list(sleepers.values())),
                lambda f: len(f) == len(sleepers),
                60,
                "sleepers woke",
            )
            after = {bot: await status(chaos_client, bot) for bot in bots}
            await stop_and_heal(chaos_client, bots)
            await eventually(
                lambda: open_executions(chaos_pool), lambda rows: not rows, 30, "no open execution"
            )
        except AssertionError:
            print(worker.tail(4000), chaos_temporal.proc.tail(2000))
            raise

    for bot, task_id in sleepers.items():
        runs, due = sleeper_done[task_id], planned[bot]
        assert due is not None
        assert len(runs) == 1 and runs[0]["due_at"] == due, (bot, runs, due)
        assert after[bot].isRunning
        assert after[bot].tasks[0].nextDueAt == due + timedelta(seconds=INTERVAL)
    for bot, task_id in busy.items():
        first_due = busy_done[task_id][0]["due_at"]
        assert after[bot].isRunning
        assert after[bot].tasks[0].nextDueAt == first_due + timedelta(seconds=INTERVAL)
        stored = await chaos_pool.fetchval(
            "SELECT next_planned_run_at FROM bot_task_definitions WHERE id = $1", task_id
        )
        assert stored == first_due + timedelta(seconds=INTERVAL)
