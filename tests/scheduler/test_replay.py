"""Recorded histories of the scheduler tests replay against the current workflow code.

A change that makes the workflow issue different commands for the same history (a
non-deterministic change) fails here, before it can break running bots. When a change is
intentionally incompatible (guard it with `workflow.patched` first), re-record the histories:

    XBOT_RECORD_HISTORIES=1 pytest tests/scheduler

and commit `tests/scheduler/histories/*.json`.

`histories/v1/` holds histories written by the scheduler before core v2. They must keep replaying:
bots running when a worker is upgraded replay them (through `workflows/legacy_v1`, chosen by the
absence of the `core-v2` patch marker) until they continue as new.

`histories/v2_plan_activity/` holds core v2 histories from before the plan was loaded by a local
activity (no `plan-load-local` marker): they replay with the `load_bot_plan` activity they scheduled.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.scheduler.helpers import HISTORIES
from workflows.bot_scheduler import BotScheduler
from workflows.models import PATCH_CORE_V2, PATCH_LOCAL_PLAN_LOAD

RECORDED = sorted(HISTORIES.glob("*.json"))
BEFORE_V2 = sorted((HISTORIES / "v1").glob("*.json"))
BEFORE_LOCAL_LOAD = sorted((HISTORIES / "v2_plan_activity").glob("*.json"))


def load(path: Path) -> WorkflowHistory:
    record = json.loads(path.read_text(encoding="utf-8"))
    return WorkflowHistory.from_json(record["workflow_id"], record["history"])


def test_histories_are_recorded() -> None:
    assert len(RECORDED) >= 10, "run XBOT_RECORD_HISTORIES=1 pytest tests/scheduler to record them"
    assert len(BEFORE_V2) >= 10
    assert len(BEFORE_LOCAL_LOAD) >= 10


def has_marker(history: WorkflowHistory, patch: str) -> bool:
    return any(
        e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED and patch.encode() in e.SerializeToString()
        for e in history.events
    )


def has_v2_marker(history: WorkflowHistory) -> bool:
    return has_marker(history, PATCH_CORE_V2)


def scheduled_plan_loads(history: WorkflowHistory) -> int:
    return sum(
        1
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "load_bot_plan"
    )


def local_plan_loads(history: WorkflowHistory) -> int:
    return sum(
        1
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED and b"load_bot_plan" in e.SerializeToString()
    )


@pytest.mark.parametrize("path", RECORDED, ids=[path.stem for path in RECORDED])
def test_current_histories_run_core_v2_with_local_plan_loads(path: Path) -> None:
    history = load(path)
    assert has_v2_marker(history)
    assert scheduled_plan_loads(history) == 0
    # A continued run may never load its plan (it carries it): then it never asks for the patch.
    assert has_marker(history, PATCH_LOCAL_PLAN_LOAD) == (local_plan_loads(history) > 0)


def test_most_recorded_histories_load_their_plan() -> None:
    assert sum(local_plan_loads(load(path)) > 0 for path in RECORDED) >= len(RECORDED) - 1


@pytest.mark.parametrize("path", BEFORE_LOCAL_LOAD, ids=[f"v2-{path.stem}" for path in BEFORE_LOCAL_LOAD])
async def test_a_history_with_plan_load_activities_still_replays(path: Path) -> None:
    history = load(path)
    assert has_v2_marker(history) and not has_marker(history, PATCH_LOCAL_PLAN_LOAD)
    assert local_plan_loads(history) == 0
    replayer = Replayer(workflows=[BotScheduler], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)


@pytest.mark.parametrize("path", BEFORE_V2, ids=[f"v1-{path.stem}" for path in BEFORE_V2])
async def test_a_history_from_before_core_v2_still_replays(path: Path) -> None:
    history = load(path)
    assert not has_v2_marker(history)
    replayer = Replayer(workflows=[BotScheduler], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)


@pytest.mark.parametrize("path", RECORDED, ids=[path.stem for path in RECORDED])
async def test_recorded_history_replays(path: Path) -> None:
    history = load(path)
    assert len(history.events) >= 5
    replayer = Replayer(workflows=[BotScheduler], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)
