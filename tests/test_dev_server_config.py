"""The dev server runs with the settings the scheduler and the API rely on (xbot/temporal.py)."""

from __future__ import annotations

import asyncio
import shutil
import uuid

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ListWorkflowExecutionsRequest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from xbot.temporal import (
    DEV_SERVER_DYNAMIC_CONFIG,
    SCHEDULER_RUNNING,
    SEARCH_ATTRIBUTES,
    ensure_search_attributes,
)

# Four clients walking 100 pages of `GET /bots` at once: each page is one visibility list call.
CLIENTS = 4
PAGES = 100


@pytest.mark.devserver
async def test_clients_walking_bot_pages_are_answered_not_refused(
    dev_server_env: WorkflowEnvironment,
) -> None:
    """With the server's default visibility limit (10 calls per second per namespace) over 90% of
    these are refused ("namespace rate limit exceeded"), which a client retries only a second later."""
    client = dev_server_env.client
    request = ListWorkflowExecutionsRequest(
        namespace=client.namespace, query="WorkflowId IN ('bot-a', 'bot-b')", page_size=2
    )

    async def walk() -> list[BaseException]:
        refused: list[BaseException] = []
        for _ in range(PAGES):
            try:
                await client.workflow_service.list_workflow_executions(request, retry=False)
            except Exception as error:
                refused.append(error)
        return refused

    refused = [
        error for walker in await asyncio.gather(*(walk() for _ in range(CLIENTS))) for error in walker
    ]
    assert not refused, f"{len(refused)} of {CLIENTS * PAGES} list calls refused, e.g. {refused[0]!r}"


@workflow.defn(sandboxed=False)
class PublishOnce:
    @workflow.run
    async def run(self) -> None:
        workflow.upsert_search_attributes([SCHEDULER_RUNNING.value_set(True)])


@pytest.mark.devserver
async def test_attributes_added_to_a_server_that_lacked_them_are_usable_at_once(task_queue: str) -> None:
    """A dev server restarted on an older file lacks the attributes, and (with the definitions
    cached) it takes a moment to use ones just added: a bot publishing its state in that moment
    must not fail its workflow task."""
    temporal = shutil.which("temporal")
    assert temporal is not None
    flags = [f"--dynamic-config-value={key}={value}" for key, value in DEV_SERVER_DYNAMIC_CONFIG.items()]
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal, dev_server_log_level="error", dev_server_extra_args=flags
    )
    try:
        client = env.client
        assert await ensure_search_attributes(client) == sorted(a.name for a in SEARCH_ATTRIBUTES)
        async with Worker(client, task_queue=task_queue, workflows=[PublishOnce]):
            handle = await client.start_workflow(
                PublishOnce.run, id=f"publish-{uuid.uuid4().hex[:8]}", task_queue=task_queue
            )
            await asyncio.wait_for(handle.result(), timeout=60)
        failed = [
            event
            async for event in handle.fetch_history_events()
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
        ]
        assert not failed, failed[0].workflow_task_failed_event_attributes.failure.message
        assert await ensure_search_attributes(client) == []
    finally:
        await env.shutdown()
