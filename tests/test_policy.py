"""The scheduling policy: pure functions, no Temporal, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workflows import policy
from workflows.models import TaskPlan
from workflows.policy import Candidate, DependencyVerdict, DependencyView, Schedule

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def plan(**fields: object) -> TaskPlan:
    defaults: dict[str, object] = {"id": 1, "task_type": "noop", "interval_seconds": 60}
    defaults.update(fields)
    return TaskPlan.model_validate(defaults)


def view(task_id: int = 2, **fields: object) -> DependencyView:
    values: dict[str, object] = {
        "task_id": task_id,
        "label": f"dep #{task_id}",
        "schedule": Schedule(interval=timedelta(minutes=10)),
        "last_success_at": None,
        "last_failure_at": None,
        "last_error": None,
        "busy": False,
        "paused": False,
    }
    values.update(fields)
    return DependencyView(**values)  # type: ignore[arg-type]


class TestInitialDue:
    def test_planned_time_wins_even_in_the_past(self) -> None:
        planned = T0 - timedelta(hours=3)
        task = plan(next_planned_run_at=planned, last_started_at=T0 - MINUTE)
        assert policy.initial_due(task, T0, 60) == planned

    def test_last_start_plus_interval(self) -> None:
        task = plan(interval_seconds=300, last_started_at=T0 - MINUTE)
        assert policy.initial_due(task, T0, 60) == T0 + 4 * MINUTE

    def test_new_task_waits_the_lead_time(self) -> None:
        assert policy.initial_due(plan(), T0, 45) == T0 + timedelta(seconds=45)

    def test_cron_without_history_takes_next_occurrence(self) -> None:
        task = plan(interval_seconds=None, cron_expression="*/15 * * * *")
        assert policy.initial_due(task, T0 + MINUTE, 60) == T0 + 15 * MINUTE

    def test_cron_after_last_start(self) -> None:
        task = plan(interval_seconds=None, cron_expression="0 * * * *", last_started_at=T0)
        assert policy.initial_due(task, T0 + 5 * MINUTE, 60) == T0 + timedelta(hours=1)


class TestAdvance:
    def test_next_is_nominal_plus_interval_not_completion_plus_interval(self) -> None:
        schedule = Schedule(interval=MINUTE)
        finished_late = T0 + timedelta(seconds=40)
        assert policy.advance(schedule, T0, finished_late) == T0 + MINUTE

    def test_missed_occurrences_are_skipped_on_the_same_phase(self) -> None:
        schedule = Schedule(interval=timedelta(minutes=10))
        now = T0 + timedelta(hours=3, minutes=4)
        assert policy.advance(schedule, T0, now) == T0 + timedelta(hours=3, minutes=10)

    def test_exact_boundary_moves_strictly_forward(self) -> None:
        schedule = Schedule(interval=MINUTE)
        assert policy.advance(schedule, T0, T0 + MINUTE) == T0 + 2 * MINUTE

    def test_cron(self) -> None:
        schedule = Schedule(cron="*/5 * * * *")
        assert policy.advance(schedule, T0, T0 + timedelta(seconds=3)) == T0 + 5 * MINUTE
        assert policy.advance(schedule, T0, T0 + 12 * MINUTE) == T0 + 15 * MINUTE

    def test_sub_minute_interval(self) -> None:
        schedule = policy.schedule_of(plan(interval_seconds=15))
        assert policy.advance(schedule, T0, T0 + timedelta(seconds=1)) == T0 + timedelta(seconds=15)

    def test_schedule_requires_exactly_one_kind(self) -> None:
        with pytest.raises(ValueError):
            Schedule()
        with pytest.raises(ValueError):
            Schedule(interval=MINUTE, cron="* * * * *")

    def test_valid_cron(self) -> None:
        assert policy.valid_cron("0 9 * * mon-fri")
        assert not policy.valid_cron("every tuesday")


class TestJitter:
    def test_jitter_stays_within_bounds(self) -> None:
        assert policy.jittered(T0, 30, 0.0) == T0
        assert policy.jittered(T0, 30, 0.5) == T0 + timedelta(seconds=15)
        assert policy.jittered(T0, 30, 0.9999999) < T0 + timedelta(seconds=30)

    def test_no_jitter(self) -> None:
        assert policy.jittered(T0, 0, 0.7) == T0


class TestOrder:
    def test_priority_then_due_then_id(self) -> None:
        ordered = policy.dispatch_order(
            [
                Candidate(1, 0, T0),
                Candidate(2, 10, T0 + MINUTE),
                Candidate(3, 10, T0),
                Candidate(4, -5, T0 - MINUTE),
                Candidate(5, 0, T0),
            ],
            now=T0 + MINUTE,
        )
        assert [c.task_id for c in ordered] == [3, 2, 1, 5, 4]

    def test_due_tasks_before_merely_upcoming_ones(self) -> None:
        # At T0 the priority-10 task is only inside the early-wake horizon; the overdue one goes first.
        ordered = policy.dispatch_order(
            [Candidate(1, 10, T0 + timedelta(milliseconds=900)), Candidate(2, 0, T0 - MINUTE)], now=T0
        )
        assert [c.task_id for c in ordered] == [2, 1]


class TestDependencies:
    def test_fresh_dependency_lets_the_task_run(self) -> None:
        decision = policy.resolve_dependencies([2], {2: view(last_success_at=T0 - MINUTE)}, T0)
        assert decision.verdict is DependencyVerdict.READY

    def test_stale_dependency_runs_first(self) -> None:
        decision = policy.resolve_dependencies([2], {2: view(last_success_at=T0 - timedelta(hours=1))}, T0)
        assert decision.verdict is DependencyVerdict.RUN_FIRST
        assert decision.run_first == (2,)

    def test_never_run_dependency_runs_first(self) -> None:
        decision = policy.resolve_dependencies([2, 3], {2: view(2), 3: view(3)}, T0)
        assert decision.run_first == (2, 3)

    def test_dependency_that_ran_for_the_task_counts_even_with_a_short_interval(self) -> None:
        dep = view(
            schedule=Schedule(interval=timedelta(seconds=1)), last_success_at=T0 + timedelta(seconds=5)
        )
        assert policy.resolve_dependencies([2], {2: dep}, T0).verdict is DependencyVerdict.READY

    def test_busy_dependency_makes_the_task_wait(self) -> None:
        decision = policy.resolve_dependencies([2], {2: view(busy=True)}, T0)
        assert decision.verdict is DependencyVerdict.WAIT
        assert decision.reason is not None and "dep #2" in decision.reason

    def test_dependency_failed_after_the_task_fell_due_skips_it(self) -> None:
        dep = view(last_failure_at=T0 + timedelta(seconds=3), last_error="boom")
        decision = policy.resolve_dependencies([2], {2: dep}, T0)
        assert decision.verdict is DependencyVerdict.SKIP
        assert decision.reason == "dependency dep #2 failed: boom"

    def test_older_failure_gives_the_dependency_another_chance(self) -> None:
        dep = view(last_failure_at=T0 - timedelta(hours=1))
        assert policy.resolve_dependencies([2], {2: dep}, T0).verdict is DependencyVerdict.RUN_FIRST

    def test_paused_stale_dependency_skips(self) -> None:
        decision = policy.resolve_dependencies([2], {2: view(paused=True)}, T0)
        assert decision.verdict is DependencyVerdict.SKIP

    def test_unknown_dependency_is_ignored(self) -> None:
        assert policy.resolve_dependencies([99], {}, T0).verdict is DependencyVerdict.READY


class TestRetries:
    def test_retry_budget_from_definition(self) -> None:
        task = plan(max_retries=4)
        assert [policy.is_final_failure(task, failures) for failures in range(1, 7)] == [
            False,
            False,
            False,
            False,
            True,
            True,
        ]

    def test_no_retries_means_the_first_failure_is_final(self) -> None:
        assert policy.is_final_failure(plan(max_retries=0), 1)

    def test_cap_never_below_first_delay(self) -> None:
        task = plan(retry_delay_minutes=10, max_retry_delay_minutes=1)
        assert policy.retry_delay(task, 3) == timedelta(minutes=10)

    def test_lost_attempts_start_again_at_once_then_back_off_a_little(self) -> None:
        delays = [policy.loss_delay(losses) for losses in range(1, 9)]
        assert delays[0] == timedelta(0)
        assert delays == sorted(delays)
        assert max(delays) <= policy.MAX_LOSS_DELAY

    def test_delays_grow_then_cap(self) -> None:
        task = plan(retry_delay_minutes=1, retry_backoff_coefficient=2, max_retry_delay_minutes=5)
        delays = [policy.retry_delay(task, attempt) for attempt in range(1, 6)]
        assert delays == [MINUTE, 2 * MINUTE, 4 * MINUTE, 5 * MINUTE, 5 * MINUTE]

    def test_huge_attempt_numbers_do_not_overflow(self) -> None:
        task = plan(retry_backoff_coefficient=10, max_retries=100)
        assert policy.retry_delay(task, 100) == timedelta(minutes=60)

    def test_start_to_close_covers_handler_timeout_and_lock_wait(self) -> None:
        timeout = policy.start_to_close(plan(timeout_seconds=30), timedelta(seconds=1))
        assert timeout > timedelta(seconds=61)


class TestCronDeterminism:
    @pytest.mark.parametrize(
        "expression", ["R * * * *", "0 R * * *", "r * * * *", "R/5 * * * *", "H * * * *", "H(0-29) * * * *"]
    )
    def test_random_and_hashed_fields_are_refused(self, expression: str) -> None:
        problem = policy.cron_problem(expression)
        assert problem is not None and "random" in problem

    @pytest.mark.parametrize("expression", ["*/5 * * * *", "0 9 * * MON-FRI", "0 0 * MAR,APR THU", "@hourly"])
    def test_ordinary_expressions_pass(self, expression: str) -> None:
        assert policy.cron_problem(expression) is None

    def test_garbage_is_invalid(self) -> None:
        assert "invalid" in (policy.cron_problem("61 * * * *") or "")


class TestSkippedBetween:
    @given(
        interval_s=st.integers(min_value=1, max_value=3600),
        late_s=st.integers(min_value=0, max_value=10 * 3600),
        limit=st.integers(min_value=1, max_value=60),
    )
    def test_interval_occurrences_jumped_over_are_listed_in_order(
        self, interval_s: int, late_s: int, limit: int
    ) -> None:
        schedule = policy.Schedule(interval=timedelta(seconds=interval_s))
        now = T0 + timedelta(seconds=late_s)
        following = policy.advance(schedule, T0, now)
        jumped = policy.skipped_between(schedule, T0, following, limit)
        assert schedule.interval is not None
        expected, due = [], T0 + schedule.interval
        while due < following and len(expected) < limit:
            expected.append(due)
            due += schedule.interval
        assert jumped == expected
        assert all(T0 < due <= now for due in jumped)

    def test_cron_occurrences_jumped_over(self) -> None:
        schedule = policy.Schedule(cron="*/15 * * * *")
        nominal = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
        following = policy.advance(schedule, nominal, nominal + timedelta(minutes=50))
        assert following == datetime(2026, 1, 1, 1, 0, tzinfo=UTC)
        assert policy.skipped_between(schedule, nominal, following, 10) == [
            datetime(2026, 1, 1, 0, minute, tzinfo=UTC) for minute in (15, 30, 45)
        ]


class TestAgeing:
    def test_a_task_passed_over_for_a_whole_period_goes_before_higher_priorities(self) -> None:
        now = T0 + timedelta(seconds=4.5)
        frequent = Candidate(1, 40, T0 + timedelta(seconds=4), timedelta(seconds=4))
        starving = Candidate(4, 10, T0, timedelta(seconds=4), passed_over_since=T0)
        assert [c.task_id for c in policy.dispatch_order([frequent, starving], now)] == [4, 1]

    def test_below_a_period_priority_still_decides(self) -> None:
        now = T0 + timedelta(seconds=3)
        high = Candidate(1, 40, T0 + timedelta(seconds=2), timedelta(seconds=4))
        low = Candidate(4, 10, T0, timedelta(seconds=4), passed_over_since=T0)
        assert [c.task_id for c in policy.dispatch_order([high, low], now)] == [1, 4]

    def test_a_task_merely_due_long_ago_is_not_starving(self) -> None:
        now = T0 + timedelta(hours=1)
        high = Candidate(1, 40, now, timedelta(minutes=1))
        old = Candidate(4, 0, T0, timedelta(minutes=1))
        assert [c.task_id for c in policy.dispatch_order([high, old], now)] == [1, 4]

    @given(
        durations=st.lists(st.integers(min_value=1, max_value=5), min_size=2, max_size=5),
        interval=st.integers(min_value=1, max_value=6),
    )
    def test_no_exclusive_task_waits_forever(self, durations: list[int], interval: int) -> None:
        """Simulate one bot whose exclusive tasks (all on one interval, distinct priorities) take
        `durations` seconds each: every task keeps running (without ageing the lowest starves)."""
        period = timedelta(seconds=interval)
        due = dict.fromkeys(range(len(durations)), T0)
        passed_over: dict[int, datetime | None] = dict.fromkeys(due)
        now, ran = T0, dict.fromkeys(due, 0)
        for _ in range(20 * len(durations)):
            ready = [Candidate(t, 100 - t, at, period, passed_over[t]) for t, at in due.items() if at <= now]
            if not ready:
                now = min(due.values())
                continue
            chosen = policy.dispatch_order(ready, now)[0].task_id
            for candidate in ready:
                if candidate.task_id != chosen and passed_over[candidate.task_id] is None:
                    passed_over[candidate.task_id] = now
            passed_over[chosen] = None
            ran[chosen] += 1
            due[chosen] = policy.advance(Schedule(interval=period), due[chosen], now)
            now += timedelta(seconds=durations[chosen])
        assert all(count >= 3 for count in ran.values()), ran
