"""The BotScheduler's small database activities, and the execution-row SQL the task runner shares.

Loading the plan, recording skipped occurrences, saving pause flags and settling attempts that
ended without the runner's account (worker lost, cancelled). Every one is idempotent: it is keyed
by the execution key, so a retry of the activity changes nothing. The per-attempt bookkeeping
itself lives in the task runner, so a normal run costs the workflow exactly one activity.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeAlias

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
    """Close open rows whose attempt is not running any more (its key matches no live prefix).

    One workflow run owns a bot's executions, and the caller passes the key prefixes of the runs
    it has in flight; every other open row belongs to a worker that died, an earlier run, or a
    terminated workflow, so it will never finish by itself: it is closed as `lost`.
    """
    result: str = await db.execute(
        """
        UPDATE bot_task_executions
        SET status = 'lost', completed_at = now(), error_message = $3,
            duration_ms = greatest(0, (extract(epoch FROM now() - started_at) * 1000)::int)
        WHERE bot_id = $1 AND status IN ('started', 'waiting_lock')
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


# next_planned_run_at is written only while the schedule is the one the run was planned with.
SET_NEXT_PLANNED = """
    next_planned_run_at = CASE WHEN $3::timestamptz IS NOT NULL AND schedule_version = $4
                               THEN $3::timestamptz ELSE next_planned_run_at END
"""


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
        row = await db.fetchrow(
            f"""
            UPDATE bot_task_definitions
            SET consecutive_failures = consecutive_failures + 1,
                is_active = is_active AND consecutive_failures + 1 < error_threshold,
                last_failure_key = $5,
                {SET_NEXT_PLANNED}
            WHERE id = $1 AND bot_id = $2 AND last_failure_key IS DISTINCT FROM $5
            RETURNING consecutive_failures, error_threshold, is_active, task_type, name
            """,
            task_id,
            bot_id,
            next_planned_run_at,
            schedule_version,
            execution_key,
        )
        finished = datetime.now(UTC)
        if row is None:  # counted before (a repeated write), or the definition is gone
            current = await db.fetchval(
                "SELECT consecutive_failures FROM bot_task_definitions WHERE id = $1", task_id
            )
            return AttemptResult(
                outcome="failed",
                final=True,
                execution_id=execution_id,
                finished_at=finished,
                consecutive_failures=current or 0,
                reason=clip(error, 500),
            )
        failures, threshold = row["consecutive_failures"], row["error_threshold"]
        if row["is_active"] or failures < threshold:
            return AttemptResult(
                outcome="failed",
                final=True,
                execution_id=execution_id,
                finished_at=finished,
                consecutive_failures=failures,
                reason=clip(error, 500),
            )
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
    return AttemptResult(
        outcome="failed",
        final=True,
        execution_id=execution_id,
        finished_at=finished,
        consecutive_failures=failures,
        deactivated=True,
        log_id=log_id,
        reason=clip(error, 500),
    )


def _plan_row(row: asyncpg.Record) -> TaskPlan | None:
    interval = row["interval_seconds"] or (row["interval_minutes"] * 60 if row["interval_minutes"] else None)
    cron = row["cron_expression"]
    if cron is not None and not policy.valid_cron(cron):
        return None
    return TaskPlan(
        id=row["id"],
        task_type=row["task_type"],
        name=row["name"],
        interval_seconds=None if cron else interval,
        cron_expression=cron,
        jitter_seconds=row["jitter_seconds"],
        priority=row["priority"],
        dependencies=list(row["dependencies"]),
        max_retries=row["max_retries"],
        retry_delay_minutes=row["retry_delay_minutes"],
        retry_backoff_coefficient=row["retry_backoff_coefficient"],
        max_retry_delay_minutes=row["max_retry_delay_minutes"],
        timeout_seconds=row["timeout_seconds"],
        error_threshold=row["error_threshold"],
        consecutive_failures=row["consecutive_failures"],
        rate_limit_endpoint=row["rate_limit_endpoint"],
        min_rate_limit_remaining=row["min_rate_limit_remaining"],
        lock_key=row["lock_key"],
        allow_overlap=row["allow_overlap"],
        is_paused=row["is_paused"],
        next_planned_run_at=row["next_planned_run_at"],
        last_successful_run_at=row["last_successful_run_at"],
        last_started_at=row["last_started_at"],
        schedule_version=row["schedule_version"],
    )


class SchedulerActivities:
    """Activities with an injected pool, registered by `launch.worker.build_worker`."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, identity: str) -> None:
        self.pool = pool
        self.settings = settings
        self.identity = identity

    @activity.defn(name=ACTIVITY_LOAD_PLAN)
    async def load_bot_plan(self, request: LoadPlanInput) -> BotPlan:
        bot = await self.pool.fetchrow("SELECT plan_tier FROM bots WHERE id = $1", request.bot_id)
        if bot is None:
            return BotPlan(bot_id=request.bot_id, exists=False)
        healed = await close_stale_executions(
            self.pool,
            request.bot_id,
            request.keep_execution_prefixes,
            "worker lost: the attempt stopped without recording a result (closed when the plan loaded)",
        )
        rows = await self.pool.fetch(
            """
            SELECT d.*,
                   (SELECT max(e.started_at) FROM bot_task_executions e
                    WHERE e.task_definition_id = d.id AND e.status <> 'skipped') AS last_started_at
            FROM bot_task_definitions d
            WHERE d.bot_id = $1 AND d.is_active
            ORDER BY d.id
            """,
            request.bot_id,
        )
        tasks = []
        for row in rows:
            task = _plan_row(row)
            if task is None:
                await self._warn(request.bot_id, f"task #{row['id']} ignored: invalid cron expression")
            else:
                tasks.append(task)
        return BotPlan(
            bot_id=request.bot_id,
            plan_tier=bot["plan_tier"],
            lead_seconds=await self._lead_seconds(),
            tasks=tasks,
            healed_executions=healed,
        )

    @activity.defn(name=ACTIVITY_RECORD_SKIP)
    async def record_skipped_occurrence(self, request: SkipInput) -> AttemptResult:
        async with self.pool.acquire() as db, db.transaction():
            execution_id = await db.fetchval(
                """
                INSERT INTO bot_task_executions
                    (bot_id, task_definition_id, task_type, status, due_at, started_at, completed_at,
                     duration_ms, worker_id, error_message, execution_key)
                SELECT $1, d.id, $3, 'skipped', $4, now(), now(), 0, $5, $6, $7
                FROM (SELECT $2::bigint) AS given(task_id)
                LEFT JOIN bot_task_definitions d ON d.id = given.task_id
                ON CONFLICT (execution_key) DO UPDATE SET execution_key = EXCLUDED.execution_key
                RETURNING id
                """,
                request.bot_id,
                request.task_id,
                request.task_type,
                request.due_at,
                self.identity,
                clip(f"not run: {request.reason}"),
                request.execution_key,
            )
            if request.more_due_at:
                await db.execute(
                    """
                    INSERT INTO bot_task_executions
                        (bot_id, task_definition_id, task_type, status, due_at, started_at, completed_at,
                         duration_ms, worker_id, error_message, execution_key)
                    SELECT $1, d.id, $3, 'skipped', due.at, now(), now(), 0, $4, $5, $6 || '/' || due.n
                    FROM unnest($7::timestamptz[]) WITH ORDINALITY AS due(at, n)
                    LEFT JOIN bot_task_definitions d ON d.id = $2
                    ON CONFLICT (execution_key) DO NOTHING
                    """,
                    request.bot_id,
                    request.task_id,
                    request.task_type,
                    self.identity,
                    clip(f"not run: {request.reason}"),
                    request.execution_key,
                    request.more_due_at,
                )
            await db.execute(
                f"UPDATE bot_task_definitions SET {SET_NEXT_PLANNED} WHERE id = $1 AND bot_id = $2",
                request.task_id,
                request.bot_id,
                request.next_planned_run_at,
                request.schedule_version,
            )
        return AttemptResult(outcome="cancelled", execution_id=execution_id, finished_at=datetime.now(UTC))

    @activity.defn(name=ACTIVITY_SET_PAUSED)
    async def set_task_paused(self, request: SetPausedInput) -> None:
        await self.pool.execute(
            "UPDATE bot_task_definitions SET is_paused = $3, updated_at = now() WHERE id = $1 AND bot_id = $2",
            request.task_id,
            request.bot_id,
            request.paused,
        )

    @activity.defn(name=ACTIVITY_SETTLE_ATTEMPT)
    async def settle_task_attempt(self, request: SettleAttemptInput) -> AttemptResult:
        """Give a silent attempt its row, or read back what its runner recorded before it died."""
        async with self.pool.acquire() as db, db.transaction():
            reopenable = ["started", "waiting_lock"] + (["retrying"] if request.status == "cancelled" else [])
            row = await db.fetchrow(
                """
                INSERT INTO bot_task_executions AS e
                    (bot_id, task_definition_id, task_type, status, due_at, started_at, completed_at,
                     duration_ms, attempt_number, worker_id, execution_key, error_message)
                SELECT $1, d.id, $3, $4, $5, now(), now(), 0, $6, $7, $8, $9
                FROM (SELECT $2::bigint) AS given(task_id)
                LEFT JOIN bot_task_definitions d ON d.id = given.task_id
                ON CONFLICT (execution_key) DO UPDATE
                SET status = CASE WHEN e.status = ANY($10::text[]) THEN EXCLUDED.status ELSE e.status END,
                    error_message = CASE WHEN e.status = ANY($10::text[]) THEN EXCLUDED.error_message
                                         ELSE e.error_message END,
                    completed_at = coalesce(e.completed_at, now()),
                    duration_ms = coalesce(e.duration_ms,
                        greatest(0, (extract(epoch FROM now() - e.started_at) * 1000)::int))
                RETURNING id, status, completed_at, error_message
                """,
                request.bot_id,
                request.task_id,
                request.task_type,
                request.status,
                request.due_at,
                request.attempt,
                self.identity,
                request.execution_key,
                clip(request.reason),
                reopenable,
            )
            assert row is not None
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

    async def _lead_seconds(self) -> float:
        value: Any = await self.pool.fetchval(
            "SELECT value FROM app_settings WHERE key = $1", LEAD_SECONDS_SETTING
        )
        try:
            return max(0.0, float(value))
        except (TypeError, ValueError):
            return DEFAULT_LEAD_SECONDS

    async def _warn(self, bot_id: str, content: str) -> None:
        log.warning("bot %s: %s", bot_id, content)
        await self.pool.execute(
            "INSERT INTO logs (bot_id, level, content, created_at) VALUES ($1, 'warn', $2, $3)",
            bot_id,
            content,
            datetime.now(UTC),
        )
