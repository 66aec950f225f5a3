"""The BotScheduler's small database activities, and the failure count the task runner shares.

Loading the plan, recording skipped occurrences, saving pause flags and settling attempts that
ended without the runner's account (worker lost, cancelled). Every one is idempotent: it is keyed
by the execution key, so a retry of the activity changes nothing. The per-attempt bookkeeping
itself lives in the task runner, so a normal run costs the workflow exactly one activity.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg
from temporalio import activity

from workflows import policy
from workflows.models import (
    ACTIVITY_LOAD_PLAN,
    ACTIVITY_RECORD_SKIP,
    ACTIVITY_SET_PAUSED,
    ACTIVITY_SETTLE_ATTEMPT,
    AttemptResult,
    BotPlan,
    LoadPlanInput,
    SetPausedInput,
    SettleAttemptInput,
    SkipInput,
    TaskPlan,
)
from xbot.settings import Settings
from xbot.storage import bots as bots_table
from xbot.storage import executions as executions_table
from xbot.storage import task_definitions as definitions_table
from xbot.storage.app_settings import get_setting
from xbot.storage.executions import close_stale_executions
from xbot.storage.logs import write_log

log = logging.getLogger(__name__)

LEAD_SECONDS_SETTING = "scheduler-new-task-lead-seconds"
DEFAULT_LEAD_SECONDS = 60.0
MAX_ERROR_CHARS = 2000


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def count_final_failure(
    db: asyncpg.Connection,
    bot_id: str,
    task_id: int,
    execution_key: str,
    next_planned_run_at: datetime | None,
    schedule_version: int,
    execution_id: int | None,
    error: str,
) -> AttemptResult:
    """One more consecutive final failure, once per execution key; deactivate at the threshold."""
    async with db.transaction():
        row = await definitions_table.count_final_failure(
            db, bot_id, task_id, execution_key, next_planned_run_at, schedule_version
        )
        finished = datetime.now(UTC)

        def failed(consecutive_failures: int, **more: Any) -> AttemptResult:
            return AttemptResult(
                outcome="failed",
                final=True,
                execution_id=execution_id,
                finished_at=finished,
                consecutive_failures=consecutive_failures,
                reason=clip(error, 500),
                **more,
            )

        if row is None:  # counted before (a repeated write), or the definition is gone
            return failed(await definitions_table.consecutive_failures(db, task_id) or 0)
        failures, threshold = row["consecutive_failures"], row["error_threshold"]
        if row["is_active"] or failures < threshold:
            return failed(failures)
        label = f"{row['name'] or row['task_type']} #{task_id}"
        log_id = await write_log(
            db,
            bot_id,
            "warn",
            f"Task {label} deactivated after {failures} consecutive failures "
            f"(error threshold {threshold}). Last error: {clip(error, 300)}",
            {"taskDefinitionId": task_id, "consecutiveFailures": failures, "errorThreshold": threshold},
            execution_id,
        )
    return failed(failures, deactivated=True, log_id=log_id)


def _plan_row(row: Mapping[str, Any]) -> TaskPlan | None:
    """The plan of a stored definition (its other columns, `config` among them, are left out);
    None when its cron expression is invalid."""
    interval = row["interval_seconds"] or (row["interval_minutes"] * 60 if row["interval_minutes"] else None)
    cron = row["cron_expression"]
    if cron is not None and not policy.valid_cron(cron):
        return None
    return TaskPlan.model_validate(
        {**row, "interval_seconds": None if cron else interval, "dependencies": list(row["dependencies"])}
    )


class SchedulerActivities:
    """Activities with an injected pool, registered by `launch.worker.build_worker`."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, identity: str) -> None:
        self.pool = pool
        self.settings = settings
        self.identity = identity

    @activity.defn(name=ACTIVITY_LOAD_PLAN)
    async def load_bot_plan(self, request: LoadPlanInput) -> BotPlan:
        # One connection for the whole load: each release costs the pool a reset round trip.
        async with self.pool.acquire() as db:
            tier = await bots_table.plan_tier(db, request.bot_id)
            if tier is None:
                return BotPlan(bot_id=request.bot_id, exists=False)
            healed = await close_stale_executions(
                db,
                request.bot_id,
                request.keep_execution_prefixes,
                "worker lost: the attempt stopped without recording a result (closed when the plan loaded)",
            )
            rows = await definitions_table.active_with_last_started(db, request.bot_id)
            lead_seconds = await self._lead_seconds(db)
        tasks = []
        for row in rows:
            task = _plan_row(row)
            if task is None:
                await self._warn(request.bot_id, f"task #{row['id']} ignored: invalid cron expression")
            else:
                tasks.append(task)
        return BotPlan(
            bot_id=request.bot_id,
            plan_tier=tier,
            lead_seconds=lead_seconds,
            tasks=tasks,
            healed_executions=healed,
        )

    @activity.defn(name=ACTIVITY_RECORD_SKIP)
    async def record_skipped_occurrence(self, request: SkipInput) -> AttemptResult:
        async with self.pool.acquire() as db, db.transaction():
            execution_id = await executions_table.record_skipped(
                db,
                request.bot_id,
                request.task_id,
                request.task_type,
                request.due_at,
                self.identity,
                clip(f"not run: {request.reason}"),
                request.execution_key,
                request.more_due_at,
            )
            await definitions_table.save_next_planned(
                db, request.bot_id, request.task_id, request.next_planned_run_at, request.schedule_version
            )
        return AttemptResult(outcome="cancelled", execution_id=execution_id, finished_at=datetime.now(UTC))

    @activity.defn(name=ACTIVITY_SET_PAUSED)
    async def set_task_paused(self, request: SetPausedInput) -> None:
        await definitions_table.set_paused(self.pool, request.bot_id, request.task_id, request.paused)

    @activity.defn(name=ACTIVITY_SETTLE_ATTEMPT)
    async def settle_task_attempt(self, request: SettleAttemptInput) -> AttemptResult:
        """Give a silent attempt its row, or read back what its runner recorded before it died."""
        async with self.pool.acquire() as db, db.transaction():
            reopenable = ["started", "waiting_lock"] + (["retrying"] if request.status == "cancelled" else [])
            row = await executions_table.settle_attempt(
                db,
                bot_id=request.bot_id,
                task_id=request.task_id,
                task_type=request.task_type,
                status=request.status,
                due_at=request.due_at,
                attempt=request.attempt,
                worker_id=self.identity,
                execution_key=request.execution_key,
                reason=clip(request.reason),
                reopenable=reopenable,
            )
            status, execution_id = row["status"], row["id"]
            finished = row["completed_at"] or datetime.now(UTC)
            if status == "completed":  # its worker died after the run was recorded: it ran
                return AttemptResult(outcome="completed", execution_id=execution_id, finished_at=finished)
            if status == "failed":
                return await count_final_failure(
                    db,
                    request.bot_id,
                    request.task_id,
                    request.execution_key,
                    request.next_planned_run_at,
                    request.schedule_version,
                    execution_id,
                    row["error_message"] or request.reason,
                )
            if status == "retrying":
                return AttemptResult(
                    outcome="failed",
                    execution_id=execution_id,
                    finished_at=finished,
                    reason=row["error_message"] or request.reason,
                )
            if status == "skipped":  # postponed by a rate limit before the worker died
                return AttemptResult(
                    outcome="postponed",
                    execution_id=execution_id,
                    finished_at=finished,
                    reason=row["error_message"],
                )
            outcome = "cancelled" if status == "cancelled" else "lost"
            return AttemptResult(
                outcome=outcome, execution_id=execution_id, finished_at=finished, reason=request.reason
            )

    async def _lead_seconds(self, db: asyncpg.Connection) -> float:
        value: Any = await get_setting(db, LEAD_SECONDS_SETTING)
        try:
            return max(0.0, float(value))
        except (TypeError, ValueError):
            return DEFAULT_LEAD_SECONDS

    async def _warn(self, bot_id: str, content: str) -> None:
        log.warning("bot %s: %s", bot_id, content)
        await write_log(self.pool, bot_id, "warn", content, created_at=datetime.now(UTC))
