"""Scheduler suites run against a fresh PostgreSQL database and a Java time-skipping test server.

Each test gets a test server of its own (it starts in ~0.1 s): when that server wedges on one of
its known bugs (temporalio/sdk-java#3088: a workflow task left STARTED forever, after which
every skip crawls at wall-clock speed), only the test that hit it can fail.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment


@pytest.fixture
async def env() -> AsyncIterator[WorkflowEnvironment]:
    binary = shutil.which("temporal-test-server")
    assert binary is not None, "temporal-test-server not on PATH; install the dev extra"
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=binary, data_converter=pydantic_data_converter
    )
    try:
        yield environment
    finally:
        await environment.shutdown()
