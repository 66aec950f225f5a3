"""Activities of the pre-v2 BotScheduler (`workflows.legacy_v1`), frozen: only runs that began
before scheduler core v2 call them, until they continue as new. Loading the plan and saving pause
flags are shared with v2 (`activities.bookkeeping`)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TypeAlias

import asyncpg
from temporalio import activity

from workflows.legacy_v1.models import (
    ACTIVITY_RECORD_SKIPPED,
    ACTIVITY_SETTLE_LOST_RUN,
    LostRunInput,
    SettleResult,
    SkipRunInput,
)
from xbot.settings import Settings
from xbot.storage import legacy_v1 as frozen
from xbot.storage.logs import write_log

log = logging.getLogger(__name__)

LEAD_SECONDS_SETTING = "scheduler-new-task-lead-seconds"
DEFAULT_LEAD_SECONDS = 60.0
MAX_ERROR_CHARS = 2000

Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def count_final_failure(
    db: asyncpg.Connection,
    bot_id: str,
    task_id: int,
    next_planned_run_at: datetime | None,
    execution_id: int | None,
    error: str,
) -> SettleResult:
    """One more consecutive final failure; deactivate the definition at its error threshold."""
    async with db.transaction():
        row = await frozen.count_final_failure(db, bot_id, task_id, next_planned_run_at)
        if row is None:
            return SettleResult(execution_id=execution_id)
        failures, threshold = row["consecutive_failures"], row["error_threshold"]
        if row["is_active"] or failures < threshold:
            return SettleResult(execution_id=execution_id, consecutive_failures=failures)
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
    return SettleResult(
        execution_id=execution_id, consecutive_failures=failures, deactivated=True, log_id=log_id
    )


class LegacySchedulerActivities:
    """The pre-v2 bookkeeping activities, registered by `launch.worker.build_worker`."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, identity: str) -> None:
        self.pool = pool
        self.settings = settings
        self.identity = identity

    @activity.defn(name=ACTIVITY_RECORD_SKIPPED)
    async def record_skipped_run(self, request: SkipRunInput) -> SettleResult:
        async with self.pool.acquire() as db, db.transaction():
            execution_id = await frozen.record_skipped(
                db,
                request.bot_id,
                request.task_id,
                request.task_type,
                request.due_at,
                self.identity,
                clip(f"not run: {request.reason}"),
                request.next_planned_run_at,
            )
        return SettleResult(execution_id=execution_id)

    @activity.defn(name=ACTIVITY_SETTLE_LOST_RUN)
    async def settle_lost_run(self, request: LostRunInput) -> SettleResult:
        healed = await frozen.close_stale_executions(
            self.pool, request.bot_id, request.keep_execution_prefixes, clip(request.reason), request.task_id
        )
        if request.execution_id is not None:
            await frozen.fail_retrying(self.pool, request.execution_id)
        if not request.count_failure:
            return SettleResult(healed=healed)
        async with self.pool.acquire() as db:
            result = await count_final_failure(
                db,
                request.bot_id,
                request.task_id,
                request.next_planned_run_at,
                request.execution_id,
                request.reason,
            )
        result.healed = healed
        return result
