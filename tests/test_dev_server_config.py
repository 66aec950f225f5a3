"""The dev server runs with the settings the scheduler and the API rely on (xbot/temporal.py)."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.api.workflowservice.v1 import ListWorkflowExecutionsRequest
from temporalio.testing import WorkflowEnvironment

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
