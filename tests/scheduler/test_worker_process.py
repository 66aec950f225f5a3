"""`python worker.py` runs bots against the dev server and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from temporalio.testing import WorkflowEnvironment

from tests.scheduler.helpers import (
    executions,
    insert_bot,
    insert_task,
    start_bot,
    terminate_started,
)
from tests.support.waiting import eventually
from workflows.models import SchedulerOptions

pytestmark = [pytest.mark.devserver, pytest.mark.system]

REPO = Path(__file__).resolve().parents[2]


async def test_worker_entry_point_runs_tasks_and_shuts_down_gracefully(
    dev_server_env: WorkflowEnvironment, pool: asyncpg.Pool, database_url: str
) -> None:
    task_queue = f"worker-{uuid.uuid4().hex[:8]}"
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("ENCRYPTION_", "CODEC_"))
    }
    environment.update(
        DATABASE_URL=database_url,
        TEMPORAL_ADDRESS=dev_server_env.client.service_client.config.target_host,
        TEMPORAL_TASK_QUEUE=task_queue,
        XBOT_ENV="test",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "worker.py", cwd=REPO, env=environment, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert process.stderr is not None
        while b"worker polling" not in (line := await asyncio.wait_for(process.stderr.readline(), 60)):
            assert line, "the worker exited before polling"
        bot = await insert_bot(pool)
        task = await insert_task(pool, bot, "noop", interval_seconds=1)
        await pool.execute("UPDATE bot_task_definitions SET next_planned_run_at = now() WHERE id = $1", task)
        await start_bot(dev_server_env.client, bot, task_queue, SchedulerOptions(early_wake_ms=200))
        rows = await eventually(
            lambda: executions(pool, bot, task),
            lambda r: len([x for x in r if x["status"] == "completed"]) >= 2,
        )
        assert rows[0]["worker_id"]
        await terminate_started(task_queue)
        process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(process.stderr.read(), 60)
        assert await process.wait() == 0
        assert b"worker stopped" in rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
