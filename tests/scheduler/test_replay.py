"""Recorded histories of the scheduler tests replay against the current workflow code.

A change that makes the workflow issue different commands for the same history (a
non-deterministic change) fails here, before it can break running bots. When a change is
intentionally incompatible (guard it with `workflow.patched` first), re-record the histories:

    XBOT_RECORD_HISTORIES=1 pytest tests/scheduler

and commit `tests/scheduler/histories/*.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.scheduler.helpers import HISTORIES
from workflows.bot_scheduler import BotScheduler

RECORDED = sorted(HISTORIES.glob("*.json"))


def load(path: Path) -> WorkflowHistory:
    record = json.loads(path.read_text(encoding="utf-8"))
    return WorkflowHistory.from_json(record["workflow_id"], record["history"])


def test_histories_are_recorded() -> None:
    assert len(RECORDED) >= 10, "run XBOT_RECORD_HISTORIES=1 pytest tests/scheduler to record them"


@pytest.mark.parametrize("path", RECORDED, ids=[path.stem for path in RECORDED])
async def test_recorded_history_replays(path: Path) -> None:
    history = load(path)
    assert len(history.events) >= 5
    replayer = Replayer(workflows=[BotScheduler], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)
