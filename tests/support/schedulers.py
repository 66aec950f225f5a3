"""Starting a bot's BotScheduler workflow and asking its status, as the tests of every suite do."""

from __future__ import annotations

from typing import Any

from temporalio.client import Client, WorkflowHandle

from workflows.models import QUERY_STATUS, SchedulerOptions, SchedulerStatus
from xbot import bot_control


async def start_scheduler(
    client: Client, bot_id: str, task_queue: str, options: SchedulerOptions
) -> WorkflowHandle[Any, Any]:
    """Signal-with-start through the front door: the workflow id is the bot id, running once the
    start signal arrives."""
    return await bot_control.signal_start(client, bot_id, task_queue, options)


async def query_status(handle: WorkflowHandle[Any, Any]) -> SchedulerStatus:
    result: SchedulerStatus = await handle.query(QUERY_STATUS, result_type=SchedulerStatus)
    return result
