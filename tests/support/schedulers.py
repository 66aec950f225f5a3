"""Starting a bot's BotScheduler workflow and asking its status, as the tests of every suite do."""

from __future__ import annotations

from typing import Any

from temporalio.client import Client, WorkflowHandle

from workflows.models import (
    QUERY_STATUS,
    SIGNAL_START,
    WORKFLOW_NAME,
    SchedulerInput,
    SchedulerOptions,
    SchedulerStatus,
)


async def start_scheduler(
    client: Client, bot_id: str, task_queue: str, options: SchedulerOptions
) -> WorkflowHandle[Any, Any]:
    """Signal-with-start: the workflow id is the bot id, running once the start signal arrives."""
    return await client.start_workflow(
        WORKFLOW_NAME,
        SchedulerInput(bot_id=bot_id, options=options),
        id=bot_id,
        task_queue=task_queue,
        start_signal=SIGNAL_START,
    )


async def query_status(handle: WorkflowHandle[Any, Any]) -> SchedulerStatus:
    result: SchedulerStatus = await handle.query(QUERY_STATUS, result_type=SchedulerStatus)
    return result
