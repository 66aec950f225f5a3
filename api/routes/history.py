"""What happened: executions, logs (both newest first, cursor-paginated) and per-task statistics."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from api.auth import require_token
from api.deps import COMMON_ERRORS, MAX_BIGINT, ExistingBotId, Pool, error_docs
from api.errors import ApiError
from api.pagination import decode_cursor, encode_cursor

router = APIRouter(tags=["history"], dependencies=[Depends(require_token)], responses=COMMON_ERRORS)

ExecutionStatus = Literal[
    "started", "waiting_lock", "retrying", "completed", "failed", "cancelled", "skipped", "lost"
]
LogLevel = Literal["debug", "info", "warn", "error"]
LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warn", "error")

Limit = Annotated[int, Query(ge=1, le=200)]
Cursor = Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")]
Since = Annotated[datetime | None, Query(description="Inclusive lower bound (ISO-8601 with time zone)")]
Until = Annotated[datetime | None, Query(description="Exclusive upper bound (ISO-8601 with time zone)")]


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


class ExecutionPage(BaseModel):
    items: list[Execution]
    next_cursor: str | None


class LogEntry(BaseModel):
    id: int
    bot_id: str | None
    level: str
    content: str
    context: Any = None
    task_execution_id: int | None
    created_at: datetime


class LogPage(BaseModel):
    items: list[LogEntry]
    next_cursor: str | None


class TaskStats(BaseModel):
    task_id: int
    task_type: str
    name: str | None
    runs: int = Field(description="Execution attempts recorded in the window")
    completed: int
    failed: int
    success_rate: float | None = Field(description="completed / (completed + failed); null before any")
    p50_duration_ms: float | None
    p95_duration_ms: float | None
    last_run_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None


class StatsPage(BaseModel):
    bot_id: str
    since: datetime | None
    tasks: list[TaskStats]


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ApiError(422, f"{name}: must include a time zone")
    return value


class _Where:
    """Accumulates SQL conditions with numbered parameters."""

    def __init__(self, first: str, value: object) -> None:
        self.parts = [first]
        self.args: list[object] = [value]

    def add(self, template: str, *values: object) -> None:
        numbers = [f"${len(self.args) + index}" for index in range(1, len(values) + 1)]
        self.parts.append(template.format(*numbers))
        self.args.extend(values)

    @property
    def sql(self) -> str:
        return " AND ".join(self.parts)


@router.get("/bots/{botId}/executions", response_model=ExecutionPage, responses=error_docs(404))
async def executions(
    bot_id: ExistingBotId,
    pool: Pool,
    task_id: Annotated[int | None, Query(ge=1, le=MAX_BIGINT, description="Task definition id")] = None,
    status: Annotated[ExecutionStatus | None, Query()] = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> ExecutionPage:
    """Executions of the bot, newest first (by start time)."""
    where = _Where("bot_id = $1", bot_id)
    if task_id is not None:
        where.add("task_definition_id = {}", task_id)
    if status is not None:
        where.add("status = {}", status)
    if _aware("since", since) is not None:
        where.add("started_at >= {}", since)
    if _aware("until", until) is not None:
        where.add("started_at < {}", until)
    if cursor is not None:
        where.add("(started_at, id) < ({}, {})", *decode_cursor(cursor))
    rows = await pool.fetch(
        f"SELECT * FROM bot_task_executions WHERE {where.sql}"
        f" ORDER BY started_at DESC, id DESC LIMIT {limit + 1}",
        *where.args,
    )
    items = [Execution.model_validate(dict(row)) for row in rows[:limit]]
    more = len(rows) > limit
    return ExecutionPage(
        items=items, next_cursor=encode_cursor(items[-1].started_at, items[-1].id) if more else None
    )


@router.get("/bots/{botId}/logs", response_model=LogPage, responses=error_docs(404))
async def logs(
    bot_id: ExistingBotId,
    pool: Pool,
    level: Annotated[LogLevel | None, Query(description="Minimum level")] = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> LogPage:
    """Logs of the bot, newest first."""
    where = _Where("bot_id = $1", bot_id)
    if level is not None:
        where.add("level = ANY({})", list(LEVELS[LEVELS.index(level) :]))
    if _aware("since", since) is not None:
        where.add("created_at >= {}", since)
    if _aware("until", until) is not None:
        where.add("created_at < {}", until)
    if cursor is not None:
        where.add("(created_at, id) < ({}, {})", *decode_cursor(cursor))
    rows = await pool.fetch(
        f"SELECT id, bot_id, level, content, context, task_execution_id, created_at FROM logs"
        f" WHERE {where.sql} ORDER BY created_at DESC, id DESC LIMIT {limit + 1}",
        *where.args,
    )
    items = [LogEntry.model_validate(dict(row)) for row in rows[:limit]]
    more = len(rows) > limit
    return LogPage(
        items=items, next_cursor=encode_cursor(items[-1].created_at, items[-1].id) if more else None
    )


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


@router.get("/bots/{botId}/stats", response_model=StatsPage, responses=error_docs(404))
async def stats(bot_id: ExistingBotId, pool: Pool, since: Since = None) -> StatsPage:
    """Per task definition: runs, success rate, p50/p95 duration of successful runs, last error."""
    rows = await pool.fetch(_STATS, bot_id, _aware("since", since))
    tasks = []
    for row in rows:
        values = dict(row)
        finished = values["completed"] + values["failed"]
        values["success_rate"] = values["completed"] / finished if finished else None
        tasks.append(TaskStats.model_validate(values))
    return StatsPage(bot_id=bot_id, since=since, tasks=tasks)
