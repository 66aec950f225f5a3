"""SchedulerState without Temporal: merging plans and requests that race with a plan load."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from workflows.models import BotPlan, SchedulerCarry, SchedulerOptions, TaskPlan
from workflows.scheduler_state import SchedulerState

NOW = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)


def plan(*task_ids: int) -> BotPlan:
    return BotPlan(
        bot_id="b", tasks=[TaskPlan(id=i, task_type="noop", interval_seconds=60) for i in task_ids]
    )


def fresh_state() -> SchedulerState:
    state = SchedulerState("b", SchedulerOptions(), SchedulerCarry())
    state.merge_plan(plan(1), NOW, random.Random(1))
    return state


def test_run_task_sent_during_a_load_waits_for_the_next_load() -> None:
    state = fresh_state()
    asked_before = state.pending_ids()  # the load starts...
    state.request_run(2, NOW)  # ...the definition is created and run_task arrives meanwhile
    state.merge_plan(plan(1), NOW, random.Random(1), asked_before)  # loaded before the insert
    assert state.pending_run_requests == [2] and state.reload_requested
    state.merge_plan(plan(1, 2), NOW + timedelta(seconds=1), random.Random(1), state.pending_ids())
    assert state.tasks[2].requested_at == NOW + timedelta(seconds=1)
    assert state.pending_run_requests == []


def test_run_task_for_a_definition_that_does_not_exist_is_dropped_with_a_log() -> None:
    state = fresh_state()
    state.request_run(9, NOW)
    state.merge_plan(plan(1), NOW, random.Random(1), state.pending_ids())
    assert state.pending_run_requests == []
    assert "no active task definition 9" in state.events[-1].data["content"]


def test_pause_of_a_definition_not_loaded_yet_applies_when_it_is() -> None:
    state = fresh_state()
    asked_before = state.pending_ids()
    state.set_paused(3, True, NOW)
    state.merge_plan(plan(1), NOW, random.Random(1), asked_before)
    assert state.pending_pauses == {3: True}
    state.merge_plan(plan(1, 3), NOW, random.Random(1), state.pending_ids())
    assert state.tasks[3].paused and state.pending_pauses == {}


def test_a_new_definition_is_seeded_from_the_database_and_a_known_one_keeps_its_schedule() -> None:
    state = fresh_state()
    first_due = state.tasks[1].nominal_due_at
    assert first_due == NOW + timedelta(seconds=60)  # the default lead time
    planned = NOW + timedelta(hours=2)
    reloaded = plan(1)
    reloaded.tasks[0].next_planned_run_at = planned  # the runner's own bookkeeping, not an edit
    state.merge_plan(reloaded, NOW + timedelta(seconds=5), random.Random(1))
    assert state.tasks[1].nominal_due_at == first_due
    edited = plan(1)
    edited.tasks[0].interval_seconds = 300  # the operator changed the schedule: reseed
    edited.tasks[0].next_planned_run_at = planned
    state.merge_plan(edited, NOW + timedelta(seconds=6), random.Random(1))
    assert state.tasks[1].nominal_due_at == planned


def test_removed_definitions_are_forgotten() -> None:
    state = fresh_state()
    removed = state.merge_plan(plan(), NOW, random.Random(1))
    assert removed == [1] and state.tasks == {} and state.definitions() == []


def test_event_buffer_is_bounded_and_numbered() -> None:
    state = SchedulerState("b", SchedulerOptions(event_buffer_size=5), SchedulerCarry())
    for index in range(12):
        state.emit_log(NOW, "info", f"event {index}")
    assert [event.seq for event in state.events] == [8, 9, 10, 11, 12]
    assert state.carry().last_event_seq == 12
