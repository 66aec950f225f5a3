"""The `bot_task_executions` table: one row per attempt of a task, keyed by its execution key.

Every write is idempotent on `execution_key` (an activity retried by Temporal changes nothing).
The pre-v2 scheduler's own statements are frozen in `xbot.storage.legacy_v1`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import BaseModel

from xbot.storage.pages import Where, newest_first
from xbot.storage.pool import Executor
from xbot.storage.task_definitions import SET_NEXT_PLANNED


# A row of `bot_task_executions`, as the API returns it (no docstring: it would change the schema).
class Execution(BaseModel):
    id: int
    bot_id: str
    task_definition_id: int | None
    task_type: str
    status: str
    due_at: datetime | None
    started_at: datetime
    completed_at: datetime | None
    duration_ms: int | None
    attempt_number: int
    rate_limit_remaining: int | None
    worker_id: str | None
    result_data: Any = None
    error_message: str | None
    error_stack: str | None


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


async def record_skipped(
    db: Executor,
    bot_id: str,
    task_id: int,
    task_type: str,
    due_at: datetime,
    worker_id: str,
    reason: str,
    execution_key: str,
    more_due_at: Sequence[datetime] = (),
) -> int | None:
    """A `skipped` row for an occurrence not run, and one per further occurrence in `more_due_at`
    (keys `{execution_key}/{n}`); the first row's id. The definition may be gone (null id)."""
    execution_id: int | None = await db.fetchval(
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
        bot_id,
        task_id,
        task_type,
        due_at,
        worker_id,
        reason,
        execution_key,
    )
    if more_due_at:
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
            bot_id,
            task_id,
            task_type,
            worker_id,
            reason,
            execution_key,
            list(more_due_at),
        )
    return execution_id


async def settle_attempt(
    db: Executor,
    *,
    bot_id: str,
    task_id: int,
    task_type: str,
    status: str,
    due_at: datetime,
    attempt: int,
    worker_id: str,
    execution_key: str,
    reason: str,
    reopenable: Sequence[str],
) -> asyncpg.Record:
    """Give a silent attempt its closed row (`status`), or close the row its runner left open in
    one of the `reopenable` states; (id, status, completed_at, error_message) as they now are."""
    row: asyncpg.Record | None = await db.fetchrow(
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
        bot_id,
        task_id,
        task_type,
        status,
        due_at,
        attempt,
        worker_id,
        execution_key,
        reason,
        list(reopenable),
    )
    assert row is not None
    return row


async def open_attempt(
    db: Executor,
    *,
    bot_id: str,
    task_id: int,
    task_type: str,
    due_at: datetime,
    started_at: datetime,
    attempt: int,
    worker_id: str,
    execution_key: str,
) -> tuple[int, dict[str, Any] | None]:
    """The attempt's `started` row (written once per key) and its definition's config (None when
    the definition is gone or inactive), in one statement."""
    row = await db.fetchrow(
        """
        WITH definition AS (
            SELECT id, config FROM bot_task_definitions
            WHERE id = $2 AND bot_id = $1 AND is_active
        ), attempt AS (
            INSERT INTO bot_task_executions
                (bot_id, task_definition_id, task_type, status, due_at, started_at, attempt_number,
                 worker_id, execution_key)
            SELECT $1, d.id, $3, 'started', $4, $5, $6, $7, $8
            FROM (SELECT $2::bigint) AS given(task_id)
            LEFT JOIN bot_task_definitions d ON d.id = given.task_id
            ON CONFLICT (execution_key) DO UPDATE SET worker_id = EXCLUDED.worker_id
            RETURNING id
        )
        SELECT (SELECT id FROM attempt) AS execution_id, (SELECT config FROM definition) AS config
        """,
        bot_id,
        task_id,
        task_type,
        due_at,
        started_at,
        attempt,
        worker_id,
        execution_key,
    )
    assert row is not None
    return row["execution_id"], row["config"]


async def complete_attempt(
    db: Executor,
    *,
    execution_id: int,
    bot_id: str,
    task_id: int,
    finished_at: datetime,
    duration_ms: int,
    result_data: dict[str, Any],
    next_planned_run_at: datetime | None,
    schedule_version: int,
) -> None:
    """The row completed, and its definition's success recorded (failures reset), in one statement."""
    await db.execute(
        f"""
        WITH done AS (
            UPDATE bot_task_executions
            SET status = 'completed', completed_at = $5, duration_ms = $6, result_data = $7
            WHERE id = $8
        )
        UPDATE bot_task_definitions
        SET last_successful_run_at = $5, consecutive_failures = 0, {SET_NEXT_PLANNED}
        WHERE id = $1 AND bot_id = $2
        """,
        task_id,
        bot_id,
        next_planned_run_at,
        schedule_version,
        finished_at,
        duration_ms,
        result_data,
        execution_id,
    )


async def close_attempt(
    db: Executor, execution_id: int, status: str, at: datetime, duration_ms: int, error: str | None
) -> None:
    """End an open (`started`, `waiting_lock`) row with `status`; a closed row stays as it is."""
    await db.execute(
        """
        UPDATE bot_task_executions
        SET status = $2, completed_at = $3, duration_ms = $4, error_message = $5
        WHERE id = $1 AND status IN ('started', 'waiting_lock')
        """,
        execution_id,
        status,
        at,
        duration_ms,
        error,
    )


async def set_rate_limit_remaining(db: Executor, execution_id: int | None, remaining: int | None) -> None:
    await db.execute(
        "UPDATE bot_task_executions SET rate_limit_remaining = $2 WHERE id = $1", execution_id, remaining
    )


async def mark_waiting_lock(db: Executor, execution_id: int | None, reason: str) -> None:
    await db.execute(
        "UPDATE bot_task_executions SET status = 'waiting_lock', error_message = $2"
        " WHERE id = $1 AND status = 'started'",
        execution_id,
        reason,
    )


async def mark_started_after_lock(db: Executor, execution_id: int | None, started_at: datetime) -> None:
    await db.execute(
        "UPDATE bot_task_executions SET status = 'started', error_message = NULL, started_at = $2"
        " WHERE id = $1 AND status = 'waiting_lock'",
        execution_id,
        started_at,
    )


async def page_executions(
    db: Executor,
    bot_id: str,
    *,
    task_id: int | None,
    status: str | None,
    since: datetime | None,
    until: datetime | None,
    before: tuple[datetime, int] | None,
    limit: int,
) -> list[Execution]:
    """The bot's executions newest first (by start), filtered, older than the (started_at, id)
    `before`; up to `limit` of them."""
    where = Where("bot_id = $1", args=(bot_id,))
    where.equal("task_definition_id", task_id)
    where.equal("status", status)
    where.add("started_at >= {}", since)
    where.add("started_at < {}", until)
    rows = await newest_first(
        db, "SELECT * FROM bot_task_executions", where, order=("started_at", "id"), before=before, limit=limit
    )
    return [Execution.model_validate(dict(row)) for row in rows]
