"""Connecting a bot's X account from the dashboard: OAuth 2.0 Authorization Code with PKCE.

`POST /bots/{id}/connect` (bearer token) returns X's authorize URL. X sends the browser back to
`GET /oauth/x/callback`, which has no bearer token: the single-use `state` is its credential. It answers
with a redirect to the dashboard, or a page saying why nothing was connected.
"""

from __future__ import annotations

import html
import logging
from datetime import datetime
from urllib.parse import quote

import httpx
from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from api.auth import require_token
from api.deps import COMMON_ERRORS, ExistingBotId, Pool, State, error_docs
from api.errors import ServiceUnavailable
from xbot import bot_control
from xbot.crypto.at_rest import TokenCipher
from xbot.x.connect import (
    ConnectNotConfigured,
    ConnectRefused,
    ConnectResult,
    finish_connect,
    start_connect,
)

log = logging.getLogger(__name__)

router = APIRouter(tags=["x-connect"])

CALLBACK_PATH = "/oauth/x/callback"


class ConnectStartOut(BaseModel):
    authorize_url: str = Field(description="Send the browser here: X's consent page for this bot")
    scopes: list[str] = Field(description="The scopes asked for: the bot's task types' and offline.access")
    redirect_uri: str = Field(description="Where X sends the browser back (X_REDIRECT_URI)")
    expires_at: datetime = Field(description="The authorization must finish before this (10 minutes)")


def _cipher(state: State) -> TokenCipher:
    if state.cipher is None:
        raise ServiceUnavailable("token storage is not configured (TOKEN_ENCRYPTION_KEY)")
    return state.cipher


@router.post(
    "/bots/{botId}/connect",
    response_model=ConnectStartOut,
    dependencies=[Depends(require_token)],
    responses={**COMMON_ERRORS, **error_docs(404)},
)
async def connect(bot_id: ExistingBotId, pool: Pool, state: State) -> ConnectStartOut:
    """Start connecting (or reconnecting) the bot's X account: a fresh `state` and PKCE S256 challenge,
    stored server-side for 10 minutes and usable once."""
    try:
        started = await start_connect(pool, _cipher(state), state.settings, bot_id)
    except ConnectNotConfigured as error:
        raise ServiceUnavailable(str(error)) from None
    return ConnectStartOut(**started.__dict__)


_PAGE = {"text/html": {"schema": {"type": "string"}}}
_ERROR_BODY = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


@router.get(
    CALLBACK_PATH,
    response_class=HTMLResponse,
    responses={
        303: {"description": "Connected: back to the bot's page on the dashboard"},
        400: {"description": "Unknown, used or expired state; access denied; code refused", "content": _PAGE},
        404: {"description": "The bot was deleted meanwhile", "content": _PAGE},
        413: {"description": "Request too large", "content": _ERROR_BODY},
        422: {"description": "Invalid request", "content": _ERROR_BODY},
        502: {"description": "X's token endpoint failed or refused the app's credentials", "content": _PAGE},
        503: {"description": "Database or token storage unavailable", "content": {**_ERROR_BODY, **_PAGE}},
    },
)
async def callback(
    pool: Pool,
    state: State,
    state_param: str | None = Query(default=None, alias="state", max_length=512),
    code: str | None = Query(default=None, max_length=2048),
    error: str | None = Query(default=None, max_length=256),
) -> Response:
    """Where X sends the browser back. Trades the code for tokens (stored encrypted), reads the account
    with `/2/users/me`, and resumes the bot's X tasks; any failure changes nothing and says why."""
    try:
        async with httpx.AsyncClient() as http:
            result = await finish_connect(
                pool, _cipher(state), http, state.settings, state=state_param, code=code, error=error
            )
    except ConnectRefused as refused:
        log.info(
            "X account connect refused%s: %s", f" for bot {refused.bot_id}" if refused.bot_id else "", refused
        )
        return _failure_page(str(refused), refused.bot_id, refused.status)
    await _resume(state, result)
    target = f"/?x_connect=connected#/bots/{quote(result.bot_id, safe='')}"
    return RedirectResponse(target, status_code=303)


async def _resume(state: State, result: ConnectResult) -> None:
    """Tasks that failed for want of authorization run again: the scheduler reloads its definitions."""
    try:
        client = await state.temporal.get()
        await bot_control.reload_tasks(client, result.bot_id)
    except Exception as error:  # best effort: a (re)started scheduler loads them from the database
        log.warning("could not signal the scheduler of %s after connecting: %s", result.bot_id, error)


def _failure_page(message: str, bot_id: str | None, status: int) -> HTMLResponse:
    back = f"/#/bots/{quote(bot_id, safe='')}" if bot_id else "/"
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>X account not connected</title>
<link rel="stylesheet" href="/static/style.css"></head>
<body><main>
<h1>X account not connected</h1>
<p id="connect-error" class="error">{html.escape(message)}</p>
<p><a href="{html.escape(back)}">Back to the dashboard</a></p>
</main></body></html>
"""
    # no-store: the page answers a one-time link; Referrer-Policy keeps the query off other sites.
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    return HTMLResponse(body, status_code=status, headers=headers)
