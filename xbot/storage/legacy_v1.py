"""The statements of the pre-v2 scheduler's activities (`activities.legacy_v1`), frozen with them.

They differ from the v2 statements on purpose (`failed` rather than `lost`, no failure key, no
schedule version): runs that began before core v2 replay with them until they continue as new.
Kept in one module so they stay frozen together and go together.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from xbot.storage.pool import Executor


async def close_stale_executions(
    db: Executor, bot_id: str, keep_prefixes: Sequence[str], reason: str, task_id: int | None = None
) -> int:
    """Close `started` rows whose key matches no live prefix as `failed`; how many."""
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
    connection: asyncpg.Connection, bot_id: str, task_id: int, next_planned_run_at: datetime | None
) -> asyncpg.Record | None:
    """One more consecutive failure, deactivated at the threshold; None when the definition is gone."""
    row: asyncpg.Record | None = await connection.fetchrow(
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
    return row


async def record_skipped(
    connection: asyncpg.Connection,
    bot_id: str,
    task_id: int,
    task_type: str,
    due_at: datetime,
    worker_id: str,
    reason: str,
    next_planned_run_at: datetime | None,
) -> int | None:
    """A `skipped` row, and the definition's next planned run saved; the row's id."""
    execution_id: int | None = await connection.fetchval(
        """
        INSERT INTO bot_task_executions
            (bot_id, task_definition_id, task_type, status, due_at, started_at, completed_at,
             duration_ms, worker_id, error_message)
        VALUES ($1, $2, $3, 'skipped', $4, now(), now(), 0, $5, $6)
        RETURNING id
        """,
        bot_id,
        task_id,
        task_type,
        due_at,
        worker_id,
        reason,
    )
    await connection.execute(
        "UPDATE bot_task_definitions SET next_planned_run_at = $3 WHERE id = $1 AND bot_id = $2",
        task_id,
        bot_id,
        next_planned_run_at,
    )
    return execution_id


async def fail_retrying(db: Executor, execution_id: int) -> None:
    await db.execute(
        "UPDATE bot_task_executions SET status = 'failed' WHERE id = $1 AND status = 'retrying'", execution_id
    )


async def active_config(db: Executor, bot_id: str, task_id: int) -> dict[str, Any] | None:
    """The definition's config; None when it is gone or inactive."""
    config: dict[str, Any] | None = await db.fetchval(
        "SELECT config FROM bot_task_definitions WHERE id = $1 AND bot_id = $2 AND is_active",
        task_id,
        bot_id,
    )
    return config


async def complete_attempt(
    db: Executor,
    execution_id: int,
    task_id: int,
    finished_at: datetime,
    duration_ms: int,
    result_data: dict[str, Any],
    next_planned_run_at: datetime | None,
) -> None:
    await db.execute(
        """
        WITH done AS (
            UPDATE bot_task_executions
            SET status = 'completed', completed_at = $2, duration_ms = $3, result_data = $4
            WHERE id = $1
        )
        UPDATE bot_task_definitions
        SET last_successful_run_at = $2, next_planned_run_at = $5, consecutive_failures = 0
        WHERE id = $6
        """,
        execution_id,
        finished_at,
        duration_ms,
        result_data,
        next_planned_run_at,
        task_id,
    )


async def finish_attempt(
    db: Executor, execution_id: int | None, status: str, at: datetime, duration_ms: int, error: str | None
) -> None:
    await db.execute(
        """
        UPDATE bot_task_executions
        SET status = $2, completed_at = $3, duration_ms = $4, error_message = $5
        WHERE id = $1
        """,
        execution_id,
        status,
        at,
        duration_ms,
        error,
    )


async def close_earlier_attempts(db: Executor, key_prefix: str, attempt: int, reason: str) -> str:
    """Fail the `started` rows of earlier attempts of one activity (Temporal started `attempt`)."""
    result: str = await db.execute(
        """
        UPDATE bot_task_executions
        SET status = 'failed', completed_at = now(), error_message = $3
        WHERE starts_with(execution_key, $1) AND status = 'started' AND attempt_number < $2
        """,
        key_prefix,
        attempt,
        reason,
    )
    return result


async def upsert_attempt(
    db: Executor,
    *,
    bot_id: str,
    task_id: int,
    task_type: str,
    status: str,
    due_at: datetime,
    started_at: datetime,
    attempt: int,
    worker_id: str,
    execution_key: str,
    rate_limit_remaining: int | None,
    error: str | None,
) -> int | None:
    """The attempt's row (closed at once unless `started`); its id."""
    execution_id: int | None = await db.fetchval(
        """
        INSERT INTO bot_task_executions
            (bot_id, task_definition_id, task_type, status, due_at, started_at, attempt_number,
             worker_id, execution_key, rate_limit_remaining, error_message, completed_at, duration_ms)
        VALUES ($1, $2, $3, $4::text, $5, $6::timestamptz, $7, $8, $9, $10, $11,
                CASE WHEN $4::text = 'started' THEN NULL ELSE $6::timestamptz END,
                CASE WHEN $4::text = 'started' THEN NULL ELSE 0 END)
        ON CONFLICT (execution_key) DO UPDATE
        SET status = EXCLUDED.status, started_at = EXCLUDED.started_at, error_message = EXCLUDED.error_message
        RETURNING id
        """,
        bot_id,
        task_id,
        task_type,
        status,
        due_at,
        started_at,
        attempt,
        worker_id,
        execution_key,
        rate_limit_remaining,
        error,
    )
    return execution_id
