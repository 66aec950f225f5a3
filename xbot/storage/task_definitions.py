"""The `bot_task_definitions` table: every statement on it (rows come back as plain dicts).

Its fields are declared once, in `workflows.models.TaskSchedule`: the workflow carries them as a
`TaskPlan`, the API returns them as `xbot.task_definitions.TaskDefinition`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from xbot.storage.pool import Executor

# next_planned_run_at is written only while the schedule is the one the run was planned with
# ($3: the new value, $4: the schedule_version the run was planned under).
SET_NEXT_PLANNED = """
    next_planned_run_at = CASE WHEN $3::timestamptz IS NOT NULL AND schedule_version = $4
                               THEN $3::timestamptz ELSE next_planned_run_at END
"""

SCHEDULE_COLUMNS = ("interval_minutes", "interval_seconds", "cron_expression", "jitter_seconds")


async def list_definitions(db: Executor, bot_id: str) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT * FROM bot_task_definitions WHERE bot_id = $1 ORDER BY id", bot_id)
    return [dict(row) for row in rows]


async def get_definition(db: Executor, bot_id: str, task_id: int) -> dict[str, Any] | None:
    row = await db.fetchrow(
        "SELECT * FROM bot_task_definitions WHERE bot_id = $1 AND id = $2", bot_id, task_id
    )
    return dict(row) if row else None


async def insert_definition(
    connection: asyncpg.Connection, bot_id: str, values: Mapping[str, Any]
) -> dict[str, Any]:
    columns = ", ".join(["bot_id", *values])
    placeholders = ", ".join(f"${index}" for index in range(1, len(values) + 2))
    row = await connection.fetchrow(
        f"INSERT INTO bot_task_definitions ({columns}) VALUES ({placeholders}) RETURNING *",
        bot_id,
        *values.values(),
    )
    assert row is not None
    return dict(row)


async def update_definition(
    connection: asyncpg.Connection,
    bot_id: str,
    task_id: int,
    stored: Mapping[str, Any],
    values: Mapping[str, Any],
) -> dict[str, Any] | None:
    """Set these columns of the definition read as `stored`; the row as it is now."""
    assignments = ", ".join(f"{column} = ${index}" for index, column in enumerate(values, start=3))
    row = await connection.fetchrow(
        f"UPDATE bot_task_definitions SET {assignments}{_schedule_edit(stored, values)}, updated_at = now()"
        " WHERE bot_id = $1 AND id = $2 RETURNING *",
        bot_id,
        task_id,
        *values.values(),
    )
    return dict(row) if row else None


def _schedule_edit(stored: Mapping[str, Any], values: Mapping[str, Any]) -> str:
    """Extra assignments when a patch changes the schedule: the running scheduler applies it at once.

    `schedule_version` grows (a run in flight then cannot write back the old plan), and a new
    interval or cron without an explicit `next_planned_run_at` restarts from the last run rather
    than from a time planned under the old schedule.
    """
    changed = {column for column in (*SCHEDULE_COLUMNS, "next_planned_run_at") if column in values}
    changed = {column for column in changed if values[column] != stored[column]}
    if not changed:
        return ""
    extra = ", schedule_version = schedule_version + 1"
    if (
        changed & {"interval_minutes", "interval_seconds", "cron_expression"}
        and "next_planned_run_at" not in values
    ):
        extra += ", next_planned_run_at = NULL"
    return extra


async def dependents(connection: asyncpg.Connection, bot_id: str, task_id: int) -> list[int]:
    """Ids of the bot's other definitions that depend on `task_id`."""
    rows = await connection.fetch(
        "SELECT id FROM bot_task_definitions WHERE bot_id = $1 AND $2 = ANY(dependencies) AND id <> $2",
        bot_id,
        task_id,
    )
    return [row["id"] for row in rows]


async def dependency_graph(connection: asyncpg.Connection, bot_id: str) -> dict[int, list[int]]:
    """The bot's definitions: id -> ids it depends on."""
    rows = await connection.fetch(
        "SELECT id, dependencies FROM bot_task_definitions WHERE bot_id = $1", bot_id
    )
    return {row["id"]: list(row["dependencies"]) for row in rows}


async def delete_definition(connection: asyncpg.Connection, bot_id: str, task_id: int) -> bool:
    result: str = await connection.execute(
        "DELETE FROM bot_task_definitions WHERE bot_id = $1 AND id = $2", bot_id, task_id
    )
    return result.endswith(" 1")


async def set_paused(db: Executor, bot_id: str, task_id: int, paused: bool) -> dict[str, Any] | None:
    row = await db.fetchrow(
        "UPDATE bot_task_definitions SET is_paused = $3, updated_at = now()"
        " WHERE bot_id = $1 AND id = $2 RETURNING *",
        bot_id,
        task_id,
        paused,
    )
    return dict(row) if row else None


async def count_active(db: Executor, bot_id: str) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM bot_task_definitions WHERE bot_id = $1 AND is_active", bot_id
    )
    return count


async def active_task_types(db: Executor, bot_id: str) -> list[str]:
    rows = await db.fetch(
        "SELECT DISTINCT task_type FROM bot_task_definitions WHERE bot_id = $1 AND is_active", bot_id
    )
    return [row["task_type"] for row in rows]


@dataclass(frozen=True)
class RateLimitGuard:
    """A task definition's own guard: keep `min_rate_limit_remaining` of `rate_limit_endpoint`."""

    rate_limit_endpoint: str | None
    min_rate_limit_remaining: int


async def rate_limit_guard(db: Executor, bot_id: str, task_id: int) -> RateLimitGuard | None:
    row = await db.fetchrow(
        "SELECT rate_limit_endpoint, min_rate_limit_remaining FROM bot_task_definitions"
        " WHERE id = $1 AND bot_id = $2",
        task_id,
        bot_id,
    )
    return RateLimitGuard(**dict(row)) if row is not None else None


async def resume_failing(
    connection: asyncpg.Connection, bot_id: str, task_types: list[str], error_pattern: str
) -> list[int]:
    """Definitions of these types whose latest failure's message matches `error_pattern` (a
    case-insensitive regular expression) start afresh: failure count 0, active again. Their ids."""
    rows = await connection.fetch(
        """
        UPDATE bot_task_definitions d
        SET consecutive_failures = 0, is_active = true, updated_at = now()
        WHERE d.bot_id = $1 AND d.task_type = ANY($2::text[]) AND d.consecutive_failures > 0
          AND (
              SELECT e.error_message FROM bot_task_executions e
              WHERE e.task_definition_id = d.id AND e.status = 'failed'
              ORDER BY e.started_at DESC, e.id DESC LIMIT 1
          ) ~* $3
        RETURNING d.id
        """,
        bot_id,
        task_types,
        error_pattern,
    )
    return sorted(row["id"] for row in rows)


async def active_with_last_started(db: Executor, bot_id: str) -> list[asyncpg.Record]:
    """The bot's active definitions with `last_started_at`, the start of their latest attempt that ran."""
    rows: list[asyncpg.Record] = await db.fetch(
        """
        SELECT d.*,
               (SELECT max(e.started_at) FROM bot_task_executions e
                WHERE e.task_definition_id = d.id AND e.status <> 'skipped') AS last_started_at
        FROM bot_task_definitions d
        WHERE d.bot_id = $1 AND d.is_active
        ORDER BY d.id
        """,
        bot_id,
    )
    return rows


# One round trip: the bot's column and its active definitions with their latest execution. No row:
# the bot does not exist; one row with a null id: it has no active definition.
_TASKS_WITH_LAST_RUN = """
SELECT b.scheduler_enabled, d.id, d.task_type, d.priority, d.next_planned_run_at,
       d.last_successful_run_at, d.consecutive_failures, d.is_paused,
       e.status AS last_status, e.error_message AS last_error
FROM bots b
LEFT JOIN bot_task_definitions d ON d.bot_id = b.id AND d.is_active
LEFT JOIN LATERAL (
    SELECT x.status, x.error_message FROM bot_task_executions x
    WHERE x.task_definition_id = d.id ORDER BY x.started_at DESC, x.id DESC LIMIT 1
) e ON true
WHERE b.id = $1
ORDER BY d.priority DESC, d.id
"""


async def active_tasks_with_last_run(db: Executor, bot_id: str) -> list[asyncpg.Record]:
    """`bots.scheduler_enabled` on every row, with each active definition and its latest execution."""
    rows: list[asyncpg.Record] = await db.fetch(_TASKS_WITH_LAST_RUN, bot_id)
    return rows


_STATS = """
SELECT d.id AS task_id, d.task_type, d.name,
       count(e.id) AS runs,
       count(e.id) FILTER (WHERE e.status = 'completed') AS completed,
       count(e.id) FILTER (WHERE e.status = 'failed') AS failed,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY e.duration_ms)
           FILTER (WHERE e.status = 'completed') AS p50_duration_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY e.duration_ms)
           FILTER (WHERE e.status = 'completed') AS p95_duration_ms,
       max(e.started_at) AS last_run_at,
       last_error.error_message AS last_error,
       last_error.started_at AS last_error_at
FROM bot_task_definitions d
LEFT JOIN bot_task_executions e
       ON e.task_definition_id = d.id AND ($2::timestamptz IS NULL OR e.started_at >= $2)
LEFT JOIN LATERAL (
    SELECT x.error_message, x.started_at FROM bot_task_executions x
    WHERE x.task_definition_id = d.id AND x.error_message IS NOT NULL
    ORDER BY x.started_at DESC, x.id DESC LIMIT 1
) last_error ON true
WHERE d.bot_id = $1
GROUP BY d.id, last_error.error_message, last_error.started_at
ORDER BY d.id
"""


async def execution_stats(db: Executor, bot_id: str, since: datetime | None) -> list[dict[str, Any]]:
    """Per definition of the bot: runs since `since`, outcomes, p50/p95 duration of successes, last error."""
    return [dict(row) for row in await db.fetch(_STATS, bot_id, since)]


async def count_final_failure(
    connection: asyncpg.Connection,
    bot_id: str,
    task_id: int,
    execution_key: str,
    next_planned_run_at: datetime | None,
    schedule_version: int,
) -> asyncpg.Record | None:
    """One more consecutive failure, once per execution key; deactivated at its error threshold.
    None: counted before (a repeated write), or the definition is gone."""
    row: asyncpg.Record | None = await connection.fetchrow(
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
    return row


async def consecutive_failures(db: Executor, task_id: int) -> int | None:
    count: int | None = await db.fetchval(
        "SELECT consecutive_failures FROM bot_task_definitions WHERE id = $1", task_id
    )
    return count


async def save_next_planned(
    db: Executor, bot_id: str, task_id: int, next_planned_run_at: datetime | None, schedule_version: int
) -> None:
    await db.execute(
        f"UPDATE bot_task_definitions SET {SET_NEXT_PLANNED} WHERE id = $1 AND bot_id = $2",
        task_id,
        bot_id,
        next_planned_run_at,
        schedule_version,
    )


async def insert_interval_definitions(
    db: Executor,
    bot_ids: list[str],
    intervals_seconds: list[int],
    first_due: list[datetime],
    task_type: str,
    config: dict[str, Any],
) -> None:
    """One definition per bot, every `intervals_seconds[i]` from `first_due[i]`, never retried
    (bench fleets), in one statement."""
    await db.execute(
        """
        INSERT INTO bot_task_definitions
            (bot_id, task_type, name, interval_seconds, next_planned_run_at, config, max_retries,
             timeout_seconds)
        SELECT bot_id, $4, 'bench', every, due, $5::jsonb, 0, 60
        FROM unnest($1::text[], $2::int[], $3::timestamptz[]) AS plan(bot_id, every, due)
        """,
        bot_ids,
        intervals_seconds,
        first_due,
        task_type,
        config,
    )
