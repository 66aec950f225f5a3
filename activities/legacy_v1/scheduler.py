"""Activities of the pre-v2 BotScheduler (`workflows.legacy_v1`), frozen: only runs that began
before scheduler core v2 call them, until they continue as new. Loading the plan and saving pause
flags are shared with v2 (`activities.bookkeeping`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
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

log = logging.getLogger(__name__)

LEAD_SECONDS_SETTING = "scheduler-new-task-lead-seconds"
DEFAULT_LEAD_SECONDS = 60.0
MAX_ERROR_CHARS = 2000

Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def close_stale_executions(
    db: Executor, bot_id: str, keep_prefixes: Sequence[str], reason: str, task_id: int | None = None
) -> int:
    """Close `started` rows whose attempt is not running any more (its key matches no live prefix).

    One workflow run owns a bot's executions, and the caller passes the keys of the attempts
    that run still has in flight; every other `started` row belongs to a worker that died, an
    earlier run, or a terminated workflow, so it will never finish by itself.
    """
    result: str = await db.execute(
        """
        UPDATE bot_task_executions
        SET status = 'failed', completed_at = now(), error_message = $3,
            duration_ms = greatest(0, (extract(epoch FROM now() - started_at) * 1000)::int)
        WHERE bot_id = $1 AND status = 'started'
          AND ($4::bigint IS NULL OR task_definition_id = $4)
          AND NOT EXISTS (SELECT 1 FROM unnest($2::text[]) AS live(prefix)
                          WHERE starts_with(coalesce(execution_key, ''), live.prefix))
        """,
        bot_id,
        list(keep_prefixes),
        reason,
        task_id,
    )
    return int(result.split()[-1])


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
        row = await db.fetchrow(
            """
            UPDATE bot_task_definitions
            SET consecutive_failures = consecutive_failures + 1,
                is_active = is_active AND consecutive_failures + 1 < error_threshold,
                next_planned_run_at = coalesce($3, next_planned_run_at)
            WHERE id = $1 AND bot_id = $2
            RETURNING consecutive_failures, error_threshold, is_active, task_type, name
            """,
            task_id,
            bot_id,
            next_planned_run_at,
        )
        if row is None:
            return SettleResult(execution_id=execution_id)
        failures, threshold = row["consecutive_failures"], row["error_threshold"]
        if row["is_active"] or failures < threshold:
            return SettleResult(execution_id=execution_id, consecutive_failures=failures)
        label = f"{row['name'] or row['task_type']} #{task_id}"
        log_id = await db.fetchval(
            """
            INSERT INTO logs (bot_id, level, content, context, task_execution_id)
            VALUES ($1, 'warn', $2, $3, $4) RETURNING id
            """,
            bot_id,
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
            execution_id = await db.fetchval(
                """
                INSERT INTO bot_task_executions
                    (bot_id, task_definition_id, task_type, status, due_at, started_at, completed_at,
                     duration_ms, worker_id, error_message)
                VALUES ($1, $2, $3, 'skipped', $4, now(), now(), 0, $5, $6)
                RETURNING id
                """,
                request.bot_id,
                request.task_id,
                request.task_type,
                request.due_at,
                self.identity,
                clip(f"not run: {request.reason}"),
            )
            await db.execute(
                "UPDATE bot_task_definitions SET next_planned_run_at = $3 WHERE id = $1 AND bot_id = $2",
                request.task_id,
                request.bot_id,
                request.next_planned_run_at,
            )
        return SettleResult(execution_id=execution_id)

    @activity.defn(name=ACTIVITY_SETTLE_LOST_RUN)
    async def settle_lost_run(self, request: LostRunInput) -> SettleResult:
        healed = await close_stale_executions(
            self.pool, request.bot_id, request.keep_execution_prefixes, clip(request.reason), request.task_id
        )
        if request.execution_id is not None:
            await self.pool.execute(
                "UPDATE bot_task_executions SET status = 'failed' WHERE id = $1 AND status = 'retrying'",
                request.execution_id,
            )
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
