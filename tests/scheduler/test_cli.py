"""The real `temporal` CLI controls a bot running on the real dev server, as the README shows."""

from __future__ import annotations

import asyncio
import json
import shutil
from typing import Any

import asyncpg
import pytest
from temporalio.testing import WorkflowEnvironment

from tests.scheduler.helpers import (
    ScriptedHandler,
    definition,
    executions,
    insert_bot,
    insert_task,
    keep_history,
    running_worker,
    start_bot,
    status,
)
from tests.support.waiting import eventually
from workflows.models import SchedulerOptions
from xbot.temporal import BOT_ID, NEXT_DUE_AT, SCHEDULER_RUNNING

pytestmark = [pytest.mark.devserver, pytest.mark.system]


async def temporal_cli(env: WorkflowEnvironment, *args: str) -> str:
    binary = shutil.which("temporal")
    assert binary is not None
    address = env.client.service_client.config.target_host
    process = await asyncio.create_subprocess_exec(
        binary,
        *args,
        "--address",
        address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_cli_stops_and_queries_a_running_bot(
    dev_server_env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str
) -> None:
    env = dev_server_env
    bot = await insert_bot(pool)
    task = await insert_task(pool, bot, "scripted", interval_minutes=60, next_planned_run_at=None)
    planned = await pool.fetchval(
        "UPDATE bot_task_definitions SET next_planned_run_at = now() + interval '3 seconds'"
        " WHERE id = $1 RETURNING next_planned_run_at",
        task,
    )
    handler = ScriptedHandler(default="sleep", sleep_seconds=300)
    # Production options (early wake, search attributes) except a short heartbeat: stop lands fast.
    options = SchedulerOptions(heartbeat_timeout_seconds=2)
    async with running_worker(env.client, pool, task_queue, {"scripted": handler}):
        handle = await start_bot(env.client, bot, task_queue, options)
        await asyncio.wait_for(handler.started.wait(), 30)
        running = await status(handle)
        assert running.isRunning and running.runningTasks == [task]
        row = (await executions(pool, bot, task))[0]
        assert row["due_at"] == planned  # the instant the runner waited for (woken 1 s early)
        assert row["started_at"] >= row["due_at"]

        described = await handle.describe()
        attributes = described.typed_search_attributes
        assert attributes.get(BOT_ID) == bot
        assert attributes.get(SCHEDULER_RUNNING) is True
        assert attributes.get(NEXT_DUE_AT) is not None

        async def listed_running() -> str:
            query = f"BotId = '{bot}' AND SchedulerRunning = true"
            return await temporal_cli(env, "workflow", "list", "--query", query, "-o", "json")

        assert bot in await eventually(listed_running, lambda out: bot in out)

        await temporal_cli(
            env,
            "workflow",
            "signal",
            "--workflow-id",
            bot,
            "--name",
            "pause_task",
            "--input",
            json.dumps({"task_id": task}),
        )
        await eventually(lambda: definition(pool, task), lambda row: row["is_paused"])
        await temporal_cli(env, "workflow", "signal", "--workflow-id", bot, "--name", "stop")
        rows = await eventually(lambda: executions(pool, bot, task), lambda r: r[0]["status"] != "started")
        assert rows[0]["status"] == "cancelled"

        output = await temporal_cli(
            env, "workflow", "query", "--workflow-id", bot, "--type", "status", "-o", "json"
        )
        result: dict[str, Any] = json.loads(output)["queryResult"][0]
        assert result["botId"] == bot
        assert result["isRunning"] is False
        assert not result.get("runningTasks")  # the CLI leaves empty lists out of its JSON
        assert result["nextAlarmTime"] is None
        assert [t["id"] for t in result["tasks"]] == [task]
        assert any(
            e["data"].get("action") == "cancelled"
            for e in result["recentEvents"]
            if e["type"] == "entity_update"
        )
        stopped = await eventually(
            handle.describe, lambda d: d.typed_search_attributes.get(SCHEDULER_RUNNING) is False
        )
        assert stopped.typed_search_attributes.get(NEXT_DUE_AT) is None
        history = await handle.fetch_history()
        summaries = [
            e.user_metadata.summary.data.decode()
            for e in history.events
            if e.HasField("activity_task_scheduled_event_attributes") and e.HasField("user_metadata")
        ]
        assert any(f"#{task}" in summary for summary in summaries)
        await keep_history(handle, "devserver_search_attributes")
