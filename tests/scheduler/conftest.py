"""Scheduler suites run against the Java time-skipping test server and a fresh PostgreSQL database."""

from __future__ import annotations

import pytest
from temporalio.testing import WorkflowEnvironment


@pytest.fixture
def env(time_skipping_env: WorkflowEnvironment) -> WorkflowEnvironment:
    return time_skipping_env
