"""Bots CRUD and their scheduler: start, stop, status."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from fastapi import APIRouter, Depends, Response
from temporalio.client import Client, WorkflowQueryRejectedError
from temporalio.common import QueryRejectCondition
from temporalio.service import RPCError, RPCStatusCode

from api.auth import require_token
from api.deps import COMMON_ERRORS, ExistingBotId, NotFound, Pool, State, Temporal, error_docs
from api.errors import ApiError, ServiceUnavailable
from workflows.models import QUERY_STATUS, SchedulerStatus
from xbot import scheduler_client
from xbot.bots import (
    Bot,
    BotCreate,
    BotExistsError,
    BotPatch,
    TokenStorageUnavailable,
    check_bot_urls,
    create_bot,
    delete_bot,
    get_bot,
    list_bots,
    update_bot,
)

log = logging.getLogger(__name__)

router = APIRouter(tags=["bots"], dependencies=[Depends(require_token)], responses=COMMON_ERRORS)

LIST_QUERY_TIMEOUT = timedelta(seconds=2)
LIST_QUERY_CONCURRENCY = 10


class BotWithState(Bot):
    isRunning: bool | None = None
    nextAlarmTime: datetime | None = None


async def _live_state(client: Client | None, bot: Bot, gate: asyncio.Semaphore) -> BotWithState:
    """The bot with its scheduler's running state; null fields when Temporal cannot tell right now."""
    result = BotWithState(**bot.model_dump())
    if client is None:
        return result
    async with gate:
        try:
            status: SchedulerStatus = await client.get_workflow_handle(bot.id).query(
                QUERY_STATUS,
                result_type=SchedulerStatus,
                reject_condition=QueryRejectCondition.NOT_OPEN,
                rpc_timeout=LIST_QUERY_TIMEOUT,
            )
        except WorkflowQueryRejectedError:
            result.isRunning = False  # the workflow is closed
            return result
        except RPCError as error:
            # Never started: not running. Anything else (no worker, Temporal slow): unknown.
            result.isRunning = False if error.status == RPCStatusCode.NOT_FOUND else None
            return result
        except Exception as error:
            log.warning("status of %s unavailable: %s", bot.id, error)
            return result
    result.isRunning = status.isRunning
    result.nextAlarmTime = status.nextAlarmTime
    return result


async def _optional_client(state: State) -> Client | None:
    try:
        return await state.temporal.get()
    except ServiceUnavailable:
        return None


@router.post("/bots", status_code=201, response_model=Bot, responses=error_docs(400, 409))
async def create(body: BotCreate, pool: Pool, state: State) -> Bot:
    """Create a bot. OAuth tokens and the Discord webhook URL are stored encrypted and never returned
    (the URL is shown masked). URLs the outbound URL policy refuses are a 400."""
    await check_bot_urls(body, allow_private=state.settings.allow_private_urls)
    try:
        return await create_bot(pool, body, state.cipher)
    except BotExistsError as error:
        raise ApiError(409, str(error)) from None
    except TokenStorageUnavailable as error:
        raise ServiceUnavailable(str(error)) from None


@router.get("/bots", response_model=list[BotWithState])
async def list_all(pool: Pool, state: State) -> list[BotWithState]:
    """Every bot, with its scheduler's running state and next alarm."""
    bots = await list_bots(pool)
    client = await _optional_client(state)
    gate = asyncio.Semaphore(LIST_QUERY_CONCURRENCY)
    return list(await asyncio.gather(*(_live_state(client, bot, gate) for bot in bots)))


@router.get("/bots/{botId}", response_model=BotWithState, responses=error_docs(404))
async def read(bot_id: ExistingBotId, pool: Pool, state: State) -> BotWithState:
    bot = await get_bot(pool, bot_id)
    if bot is None:
        raise NotFound(f"bot {bot_id} not found")
    return await _live_state(await _optional_client(state), bot, asyncio.Semaphore(1))


@router.patch("/bots/{botId}", response_model=Bot, responses=error_docs(400, 404))
async def patch(bot_id: ExistingBotId, body: BotPatch, pool: Pool, state: State) -> Bot:
    await check_bot_urls(body, allow_private=state.settings.allow_private_urls)
    try:
        bot = await update_bot(pool, bot_id, body, state.cipher)
    except TokenStorageUnavailable as error:
        raise ServiceUnavailable(str(error)) from None
    if bot is None:
        raise NotFound(f"bot {bot_id} not found")
    return bot


@router.delete("/bots/{botId}", status_code=204, response_class=Response, responses=error_docs(404))
async def delete(bot_id: ExistingBotId, pool: Pool, client: Temporal) -> Response:
    """Stop the bot's scheduler (cancelling a running task), end its workflow, then delete the bot."""
    await scheduler_client.shut_down_for_delete(client, bot_id)
    if not await delete_bot(pool, bot_id):
        raise NotFound(f"bot {bot_id} not found")
    return Response(status_code=204)


@router.post(
    "/bots/{botId}/start", response_model=scheduler_client.StartResult, responses=error_docs(400, 404)
)
async def start(
    bot_id: ExistingBotId, pool: Pool, client: Temporal, state: State
) -> scheduler_client.StartResult:
    """Start the scheduler: `Scheduler started`, or `No tasks to schedule` when it has no active task."""
    try:
        return await scheduler_client.start(client, pool, bot_id, state.task_queue)
    except scheduler_client.SchedulerConflict as error:
        raise ApiError(400, str(error)) from None


@router.post("/bots/{botId}/stop", response_model=scheduler_client.StopResult, responses=error_docs(400, 404))
async def stop(bot_id: ExistingBotId, pool: Pool, client: Temporal) -> scheduler_client.StopResult:
    """Stop the scheduler; a running task is cancelled and recorded as such."""
    try:
        return await scheduler_client.stop(client, pool, bot_id)
    except scheduler_client.SchedulerConflict as error:
        raise ApiError(400, str(error)) from None


@router.get("/bots/{botId}/status", response_model=scheduler_client.StatusResult, responses=error_docs(404))
async def status(
    bot_id: ExistingBotId, pool: Pool, client: Temporal, state: State
) -> scheduler_client.StatusResult:
    """The workflow's `status` query; restarts a scheduler that should run but does not (`healed`)."""
    return await scheduler_client.status(client, pool, bot_id, state.task_queue)
