"""Bots CRUD and their scheduler: start, stop, status."""

from __future__ import annotations

import base64
import logging
import re
from datetime import datetime
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, Query, Response
from pydantic import TypeAdapter
from temporalio.client import Client

from api.auth import require_token
from api.deps import COMMON_ERRORS, BotIdPath, ExistingBotId, NotFound, Pool, State, Temporal, error_docs
from api.errors import ApiError, ServiceUnavailable
from api.feed import FeedHub
from api.state import ApiState, RenderedStatus
from xbot import bot_control
from xbot.bots import (
    BOT_ID_PATTERN,
    Bot,
    BotCreate,
    BotExistsError,
    BotPatch,
    TokenStorageUnavailable,
    check_bot_urls,
    create_bot,
    get_bot,
    list_bots,
    update_bot,
)
from xbot.storage.bots import delete_bot

log = logging.getLogger(__name__)

router = APIRouter(tags=["bots"], dependencies=[Depends(require_token)], responses=COMMON_ERRORS)

LIST_DEFAULT_LIMIT = 100
LIST_MAX_LIMIT = 1000


class BotWithState(Bot):
    isRunning: bool | None = None
    nextAlarmTime: datetime | None = None


PAGE = TypeAdapter(list[BotWithState])


def _encode_cursor(bot_id: str) -> str:
    return base64.urlsafe_b64encode(bot_id.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        after = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid cursor") from None
    if not re.fullmatch(BOT_ID_PATTERN, after):
        raise ApiError(400, "invalid cursor")
    return after


async def _with_state(client: Client | None, pool: asyncpg.Pool, bots: list[Bot]) -> list[BotWithState]:
    """The bots with their scheduler's running state from one visibility list call.

    Null fields when Temporal cannot tell right now. `scheduler_enabled` follows what the workflows
    published (a bot started or stopped by a CLI signal shows as such, and the column is mirrored).
    """
    results = [BotWithState(**bot.model_dump()) for bot in bots]
    if client is None or not bots:
        return results
    try:
        running = await bot_control.list_running(client, [bot.id for bot in bots])
    except Exception as error:
        log.warning("scheduler states unavailable: %s", error)
        return results
    wanted: dict[str, bool] = {}
    for result in results:
        listed = running.get(result.id)
        if listed is None:
            result.isRunning = False  # no running workflow (never started, or closed)
            continue
        result.isRunning = listed.running
        result.nextAlarmTime = listed.next_due_at if listed.running else None
        if listed.running is not None and listed.running != result.scheduler_enabled:
            wanted[result.id] = result.scheduler_enabled = listed.running
    await bot_control.mirror_enabled(pool, wanted)
    return results


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


@router.get("/bots", response_model=list[BotWithState], responses=error_docs(400))
async def list_all(
    pool: Pool,
    state: State,
    limit: Annotated[int, Query(ge=1, le=LIST_MAX_LIMIT)] = LIST_DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """A page of bots in id order, with their scheduler's running state and next alarm (one
    Temporal list call per page). When more follow, the `X-Next-Cursor` header holds the `cursor`
    of the next page (also given as a `Link: <...>; rel="next"` header)."""
    after = _decode_cursor(cursor) if cursor else None
    bots = await list_bots(pool, limit=limit + 1, after=after)
    more = len(bots) > limit
    bots = bots[:limit]
    headers: dict[str, str] = {}
    if more:
        next_cursor = _encode_cursor(bots[-1].id)
        headers["X-Next-Cursor"] = next_cursor
        headers["Link"] = f'</bots?limit={limit}&cursor={next_cursor}>; rel="next"'
    page = await _with_state(await _optional_client(state), pool, bots)
    # Rendered here in one pass: returned as models, FastAPI would validate the page once more.
    return Response(PAGE.dump_json(page), media_type="application/json", headers=headers)


@router.get("/bots/{botId}", response_model=BotWithState, responses=error_docs(404))
async def read(bot_id: ExistingBotId, pool: Pool, state: State) -> BotWithState:
    bot = await get_bot(pool, bot_id)
    if bot is None:
        raise NotFound(f"bot {bot_id} not found")
    return (await _with_state(await _optional_client(state), pool, [bot]))[0]


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
    await bot_control.shut_down_for_delete(client, bot_id)
    if not await delete_bot(pool, bot_id):
        raise NotFound(f"bot {bot_id} not found")
    return Response(status_code=204)


@router.post("/bots/{botId}/start", response_model=bot_control.StartResult, responses=error_docs(400, 404))
async def start(bot_id: ExistingBotId, pool: Pool, client: Temporal, state: State) -> bot_control.StartResult:
    """Start the scheduler: `Scheduler started`, or `No tasks to schedule` when it has no active task."""
    try:
        return await bot_control.start(client, pool, bot_id, state.task_queue)
    except bot_control.SchedulerConflict as error:
        raise ApiError(400, str(error)) from None
    finally:
        state.status_flights.forget(bot_id)  # a read begun before the change is not reused


@router.post("/bots/{botId}/stop", response_model=bot_control.StopResult, responses=error_docs(400, 404))
async def stop(bot_id: ExistingBotId, pool: Pool, client: Temporal, state: State) -> bot_control.StopResult:
    """Stop the scheduler; a running task is cancelled and recorded as such."""
    try:
        return await bot_control.stop(client, pool, bot_id)
    except bot_control.SchedulerConflict as error:
        raise ApiError(400, str(error)) from None
    finally:
        state.status_flights.forget(bot_id)


@router.get("/bots/{botId}/status", response_model=bot_control.StatusResult, responses=error_docs(404))
async def status(bot_id: BotIdPath, pool: Pool, client: Temporal, state: State) -> Response:
    """The scheduler's state without asking the workflow: the running flag and next alarm it
    publishes (search attributes), per-task state from the database, or the live feed's fresh poll.
    Concurrent calls for one bot share one read. Restarts a scheduler that should run but does not
    (`healed`); says `schedulerReachable: false` when no worker is picking up its work."""
    hub = state.hub
    try:
        rendered = await status_flights_run(state, bot_id, client, pool, hub)
    except bot_control.BotNotFound:
        raise NotFound(f"bot {bot_id} not found") from None
    return Response(rendered.body, media_type="application/json")


async def status_flights_run(
    state: ApiState, bot_id: str, client: Client, pool: asyncpg.Pool, hub: FeedHub
) -> RenderedStatus:
    # The bot's existence is checked inside the shared read, so a reused answer costs no I/O.
    async def read() -> RenderedStatus:
        answer = await bot_control.status(client, pool, bot_id, state.task_queue, hub.snapshot)
        return RenderedStatus(answer, answer.model_dump_json().encode())

    return await state.status_flights.run(
        bot_id,
        read,
        keep=lambda rendered: not rendered.answer.healed,  # "healed" is said once
    )
