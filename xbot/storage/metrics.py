"""Read-only aggregates over the tables: the `/metrics` scrape and the benchmarks' figures.

Counting from the database (not in-process counters) keeps the numbers right with several API
processes and across restarts. Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from xbot.storage.pool import Executor


async def executions_by_type_and_status(db: Executor) -> list[asyncpg.Record]:
    """(task_type, status, n) for every pair, in order."""
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT task_type, status, count(*) AS n FROM bot_task_executions GROUP BY 1, 2 ORDER BY 1, 2"
    )
    return rows


async def start_lateness(db: Executor, buckets: Sequence[float]) -> list[asyncpg.Record]:
    """Per task type, how late first attempts started after their due time (started_at - due_at):
    task_type, the count at most each bucket (in order), total, total_seconds."""
    counts = ", ".join(f"count(*) FILTER (WHERE lateness <= {bucket})" for bucket in buckets)
    rows: list[asyncpg.Record] = await db.fetch(
        f"""
        SELECT task_type, {counts}, count(*) AS total, coalesce(sum(lateness), 0) AS total_seconds
        FROM (SELECT task_type, extract(epoch FROM started_at - due_at)::float8 AS lateness
              FROM bot_task_executions WHERE due_at IS NOT NULL AND attempt_number = 1) AS first_attempts
        GROUP BY task_type ORDER BY task_type
        """
    )
    return rows


async def count_bots(db: Executor, *, scheduler_enabled_only: bool = False) -> int:
    if scheduler_enabled_only:
        enabled: int = await db.fetchval("SELECT count(*) FROM bots WHERE scheduler_enabled")
        return enabled
    total: int = await db.fetchval("SELECT count(*) FROM bots")
    return total


async def count_executions(db: Executor) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM bot_task_executions")
    return count


async def first_attempt_times(db: Executor, prefix: str) -> list[tuple[str, float, float]]:
    """(bot_id, due, started) in epoch seconds of the fleet's first attempts."""
    rows = await db.fetch(
        """
        SELECT bot_id, extract(epoch FROM due_at)::float8 AS due, extract(epoch FROM started_at)::float8 AS started
        FROM bot_task_executions
        WHERE bot_id LIKE $1 AND due_at IS NOT NULL AND attempt_number = 1
        """,
        prefix + "-%",
    )
    return [(row["bot_id"], row["due"], row["started"]) for row in rows]


async def fleet_attempts(db: Executor, prefix: str) -> list[asyncpg.Record]:
    """Every scheduled attempt of the fleet: bot_id, status, execution_key, attempt_number, and
    due, started, completed (NaN while open) in epoch seconds, worker_id ('' when none)."""
    rows: list[asyncpg.Record] = await db.fetch(
        """
        SELECT bot_id, status, execution_key, attempt_number, extract(epoch FROM due_at)::float8 AS due,
               extract(epoch FROM started_at)::float8 AS started,
               coalesce(extract(epoch FROM completed_at)::float8, 'NaN') AS completed,
               coalesce(worker_id, '') AS worker_id
        FROM bot_task_executions
        WHERE bot_id LIKE $1 AND due_at IS NOT NULL
        """,
        prefix + "-%",
    )
    return rows


async def count_running_attempts(db: Executor, prefix: str) -> int:
    """The fleet's attempts started (and not yet closed) by now."""
    count = await db.fetchval(
        "SELECT count(*) FROM bot_task_executions WHERE bot_id LIKE $1 AND status = 'started'"
        " AND started_at <= now()",
        prefix + "-%",
    )
    return int(count or 0)


async def fleet_steadiness(db: Executor, prefix: str) -> tuple[int, float]:
    """(bots that ran a first attempt, 90th percentile lateness of those due in the last 5 s)."""
    row = await db.fetchrow(
        """
        SELECT count(DISTINCT bot_id) AS bots,
               coalesce(percentile_disc(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - due_at))
                        FILTER (WHERE due_at > now() - interval '5 seconds'), 0)::float8 AS worst
        FROM bot_task_executions
        WHERE bot_id LIKE $1 AND attempt_number = 1 AND status <> 'skipped'
        """,
        prefix + "-%",
    )
    return (row["bots"], row["worst"]) if row is not None else (0, 0.0)
