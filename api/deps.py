"""Dependencies shared by the routers: the pool, the Temporal client, path parameters, error docs."""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Path, Request
from temporalio.client import Client

from api.errors import ApiError, ErrorBody
from api.state import ApiState, api_state
from xbot.bots import BOT_ID_PATTERN
from xbot.storage.bots import bot_exists

MAX_BIGINT = 2**63 - 1


# Dependencies are coroutines even when they do no I/O: FastAPI runs a plain `def` dependency in a
# worker thread, a thread hop on every request.
async def get_state(request: Request) -> ApiState:
    return api_state(request)


async def get_pool(request: Request) -> asyncpg.Pool:
    return api_state(request).pool


async def get_temporal(request: Request) -> Client:
    return await api_state(request).temporal.get()


State = Annotated[ApiState, Depends(get_state)]
Pool = Annotated[asyncpg.Pool, Depends(get_pool)]
Temporal = Annotated[Client, Depends(get_temporal)]
BotIdPath = Annotated[str, Path(alias="botId", pattern=BOT_ID_PATTERN, max_length=64)]
TaskIdPath = Annotated[int, Path(alias="taskId", ge=1, le=MAX_BIGINT)]
ReplyIdPath = Annotated[int, Path(alias="replyId", ge=1, le=MAX_BIGINT)]


class NotFound(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(404, message)


async def existing_bot_id(bot_id: BotIdPath, pool: Pool) -> str:
    if not await bot_exists(pool, bot_id):
        raise NotFound(f"bot {bot_id} not found")
    return bot_id


ExistingBotId = Annotated[str, Depends(existing_bot_id)]


def error_docs(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the `{"error": ...}` answers a route can give."""
    descriptions = {
        400: "Not possible in the current state",
        401: "Missing or wrong bearer token",
        404: "Not found",
        409: "Conflicts with existing data",
        413: "Request body too large",
        422: "Invalid request",
        503: "Database or Temporal unavailable",
    }
    return {status: {"model": ErrorBody, "description": descriptions[status]} for status in statuses}


# Every authenticated route can answer these.
COMMON_ERRORS = error_docs(401, 413, 422, 503)
