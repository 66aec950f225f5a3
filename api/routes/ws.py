"""`GET /bots/{botId}/ws`: the live feed. Authenticated before the upgrade (header or `token` query)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from api.auth import token_matches, websocket_token
from api.feed import FeedClient, now_iso
from api.state import api_state
from xbot.bots import BOT_ID_PATTERN
from xbot.storage.bots import bot_exists

log = logging.getLogger(__name__)

router = APIRouter()

_BOT_ID = re.compile(BOT_ID_PATTERN)


async def _refuse(websocket: WebSocket, status: int, message: str) -> None:
    """Answer the handshake with a plain HTTP error instead of upgrading."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse({"error": message}, status_code=status))
    else:
        await websocket.close(code=1008, reason=message)


async def _send_events(websocket: WebSocket, client: FeedClient, ping_interval: float) -> None:
    while True:
        try:
            event = await asyncio.wait_for(client.queue.get(), ping_interval)
        except TimeoutError:
            event = {"type": "ping", "botId": client.bot_id, "timestamp": now_iso()}
        await websocket.send_text(json.dumps(event))


async def _receive(websocket: WebSocket, client: FeedClient) -> None:
    """Reads until the client leaves; answers `{"type": "ping"}` with a pong in the event order."""
    while True:
        text = await websocket.receive_text()
        with contextlib.suppress(ValueError, AttributeError):
            if json.loads(text).get("type") == "ping":
                client.offer({"type": "pong", "botId": client.bot_id, "timestamp": now_iso()})


@router.websocket("/bots/{botId}/ws")
async def bot_feed(websocket: WebSocket) -> None:
    state = api_state(websocket)
    bot_id = websocket.path_params["botId"]
    if not token_matches(state.api_token, websocket_token(websocket)):
        await _refuse(websocket, 401, "missing or invalid token")
        return
    try:
        known = bool(_BOT_ID.fullmatch(bot_id)) and await asyncio.wait_for(bot_exists(state.pool, bot_id), 5)
    except Exception as error:
        log.warning("feed: cannot look up bot %s: %s", bot_id, error)
        await _refuse(websocket, 503, "database is unavailable")
        return
    if not known:
        await _refuse(websocket, 404, f"bot {bot_id} not found")
        return
    await websocket.accept()
    client = await state.hub.subscribe(bot_id)
    tasks = [
        asyncio.create_task(_send_events(websocket, client, state.feed_ping_interval)),
        asyncio.create_task(_receive(websocket, client)),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            ended = task.exception()
            if ended is not None and not isinstance(ended, WebSocketDisconnect | RuntimeError | OSError):
                log.warning("feed connection for %s ended: %r", bot_id, ended)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await state.hub.unsubscribe(client)
        with contextlib.suppress(Exception):
            await websocket.close()
