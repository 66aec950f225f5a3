"""What happened: executions, logs (both newest first, cursor-paginated) and per-task statistics."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from api.auth import require_token
from api.deps import COMMON_ERRORS, MAX_BIGINT, ExistingBotId, Pool, error_docs
from api.errors import ApiError
from api.pagination import cut_page, decode_cursor
from workflows.models import ExecutionStatus
from xbot.storage import executions as executions_table
from xbot.storage import logs as logs_table
from xbot.storage import task_definitions as definitions_table
from xbot.storage.executions import Execution
from xbot.storage.logs import LogEntry, LogLevel

router = APIRouter(tags=["history"], dependencies=[Depends(require_token)], responses=COMMON_ERRORS)

Limit = Annotated[int, Query(ge=1, le=200)]
Cursor = Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")]
Since = Annotated[datetime | None, Query(description="Inclusive lower bound (ISO-8601 with time zone)")]
Until = Annotated[datetime | None, Query(description="Exclusive upper bound (ISO-8601 with time zone)")]


class ExecutionPage(BaseModel):
    items: list[Execution]
    next_cursor: str | None


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
    rows = await executions_table.page_executions(
        pool,
        bot_id,
        task_id=task_id,
        status=status,
        since=_aware("since", since),
        until=_aware("until", until),
        before=decode_cursor(cursor) if cursor is not None else None,
        limit=limit + 1,
    )
    items, next_cursor = cut_page(rows, limit, lambda row: (row.started_at, row.id))
    return ExecutionPage(items=items, next_cursor=next_cursor)


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
    rows = await logs_table.page_logs(
        pool,
        bot_id,
        level=level,
        since=_aware("since", since),
        until=_aware("until", until),
        before=decode_cursor(cursor) if cursor is not None else None,
        limit=limit + 1,
    )
    items, next_cursor = cut_page(rows, limit, lambda row: (row.created_at, row.id))
    return LogPage(items=items, next_cursor=next_cursor)


@router.get("/bots/{botId}/stats", response_model=StatsPage, responses=error_docs(404))
async def stats(bot_id: ExistingBotId, pool: Pool, since: Since = None) -> StatsPage:
    """Per task definition: runs, success rate, p50/p95 duration of successful runs, last error."""
    tasks = []
    for values in await definitions_table.execution_stats(pool, bot_id, _aware("since", since)):
        finished = values["completed"] + values["failed"]
        values["success_rate"] = values["completed"] / finished if finished else None
        tasks.append(TaskStats.model_validate(values))
    return StatsPage(bot_id=bot_id, since=since, tasks=tasks)
