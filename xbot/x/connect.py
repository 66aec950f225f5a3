"""Connecting a bot's X account: OAuth 2.0 Authorization Code with PKCE (RFC 7636, X's flavour).

1. `start_connect` makes a fresh `state` and code verifier, stores them (the state hashed, the verifier
   encrypted; single use, 10 minutes) and returns X's authorize URL with the S256 code challenge.
2. X sends the browser to `X_REDIRECT_URI` (the API's `/oauth/x/callback`) with `state` and `code`.
   `finish_connect` consumes the state (deleted whatever happens next: it is the only credential of
   the callback), trades the code for tokens at `POST /2/oauth2/token` with the verifier, stores them
   encrypted (`xbot.x.tokens.store_tokens`, which also ends `needs_reauthorization`) and reads
   `/2/users/me` for the account's id and username.

Nothing about the bot changes before X has issued tokens. Neither the state, the verifier, the code nor
a token appears in an exception, a log line or a response.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import asyncpg
import httpx

from xbot.crypto.at_rest import TokenCipher, TokenCipherError
from xbot.errors import NonRetryableTaskError
from xbot.settings import Settings
from xbot.storage import bots, connect_requests, task_definitions
from xbot.storage.logs import write_log
from xbot.x import scopes as x_scopes
from xbot.x.client import XClient
from xbot.x.errors import XApiError
from xbot.x.token_endpoint import TOKEN_PATH, client_auth
from xbot.x.token_store import TokenStore
from xbot.x.tokens import store_tokens

log = logging.getLogger(__name__)

CONNECT_TTL = timedelta(minutes=10)
_OAUTH_ERROR = re.compile(r"^[a-z_]{1,64}$")
# A definition that last failed for one of these reasons starts afresh once the bot is connected again.
NEEDS_NEW_AUTHORIZATION = "(needs re-authorization|lacks the scope)"


class ConnectNotConfigured(Exception):
    """A setting the flow needs is missing; the message names it."""


class ConnectRefused(Exception):
    """The callback cannot connect the account; the message is safe to show to the operator."""

    def __init__(self, message: str, *, bot_id: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.bot_id = bot_id
        self.status = status


@dataclass(frozen=True)
class ConnectStart:
    authorize_url: str
    scopes: list[str]
    redirect_uri: str
    expires_at: datetime


@dataclass(frozen=True)
class ConnectResult:
    bot_id: str
    x_username: str | None
    scopes: list[str]
    missing_scopes: list[str]
    was_needing_reauthorization: bool
    resumed_task_ids: list[int]


def pkce_pair() -> tuple[str, str]:
    """A code verifier (64 unreserved characters; RFC 7636 allows 43-128) and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    return verifier, s256(verifier)


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def state_hash(state: str) -> bytes:
    return hashlib.sha256(state.encode()).digest()


def _redirect_uri(settings: Settings) -> str:
    if not settings.x_redirect_uri:
        raise ConnectNotConfigured(
            "missing setting X_REDIRECT_URI (the API's /oauth/x/callback URL, registered in the X app)"
        )
    if not settings.x_client_id:
        raise ConnectNotConfigured("missing setting X_CLIENT_ID")
    return settings.x_redirect_uri


async def start_connect(
    pool: asyncpg.Pool, cipher: TokenCipher, settings: Settings, bot_id: str
) -> ConnectStart:
    redirect_uri = _redirect_uri(settings)
    scopes = x_scopes.requested(await task_definitions.active_task_types(pool, bot_id))
    state = secrets.token_urlsafe(32)
    verifier, challenge = pkce_pair()
    expires_at = datetime.now(UTC) + CONNECT_TTL
    async with pool.acquire() as conn:
        await connect_requests.add(
            conn, state_hash(state), bot_id, cipher.encrypt(verifier), redirect_uri, scopes, expires_at
        )
    query = urlencode(
        {
            "response_type": "code",
            "client_id": settings.x_client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(scopes),
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
        quote_via=quote,  # spaces as %20, as in X's examples
    )
    return ConnectStart(f"{settings.x_authorize_url}?{query}", scopes, redirect_uri, expires_at)


async def finish_connect(
    pool: asyncpg.Pool,
    cipher: TokenCipher,
    http: httpx.AsyncClient,
    settings: Settings,
    *,
    state: str | None,
    code: str | None,
    error: str | None,
) -> ConnectResult:
    if not state:
        raise ConnectRefused("The link has no state: start again with Connect X account on the dashboard.")
    request = await connect_requests.take(pool, state_hash(state))
    if request is None:
        raise ConnectRefused(
            "This authorization link is unknown or was already used. Start again with Connect X account"
            " on the dashboard."
        )
    bot_id = request.bot_id
    if not request.live:
        raise ConnectRefused(
            "This authorization link expired (they last 10 minutes). Start again from the dashboard.",
            bot_id=bot_id,
        )
    if error:
        if error == "access_denied":
            raise ConnectRefused(
                "Access was denied on X: the account was not connected and the bot is unchanged.",
                bot_id=bot_id,
            )
        shown = error if _OAUTH_ERROR.match(error) else "an unexpected error"
        raise ConnectRefused(f"X did not authorize the app ({shown}); the bot is unchanged.", bot_id=bot_id)
    if not code:
        raise ConnectRefused("X sent no authorization code; the bot is unchanged.", bot_id=bot_id)
    try:
        verifier = cipher.decrypt(request.code_verifier_enc)
    except TokenCipherError:  # TOKEN_ENCRYPTION_KEY changed within the 10 minutes
        raise ConnectRefused(
            "This authorization cannot be finished: start again from the dashboard."
        ) from None
    body = await _exchange_code(http, settings, code, verifier, request.redirect_uri, bot_id)
    return await _save_connection(pool, cipher, http, settings, bot_id, body)


async def _exchange_code(
    http: httpx.AsyncClient, settings: Settings, code: str, verifier: str, redirect_uri: str, bot_id: str
) -> dict[str, Any]:
    try:
        client_id, auth = client_auth(settings, "connect X accounts")
    except NonRetryableTaskError as error:
        raise ConnectRefused(str(error), bot_id=bot_id, status=503) from None
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    if auth is None:
        form["client_id"] = client_id  # a public client names itself in the body (X's docs)
    try:
        response = await http.post(
            settings.x_api_base_url + TOKEN_PATH,
            data=form,
            auth=auth if auth is not None else httpx.Auth(),  # httpx.Auth(): no Authorization header
            timeout=settings.x_request_timeout_seconds,
        )
    except httpx.HTTPError as error:
        raise ConnectRefused(
            f"X's token endpoint did not answer ({type(error).__name__}); the bot is unchanged. Try again.",
            bot_id=bot_id,
            status=502,
        ) from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 200 and isinstance(body, dict) and isinstance(body.get("access_token"), str):
        return body
    # Only the OAuth error code: a token response's body is never echoed.
    oauth_error = body.get("error") if isinstance(body, dict) else None
    shown = oauth_error if isinstance(oauth_error, str) and _OAUTH_ERROR.match(oauth_error) else None
    if response.status_code >= 500 or response.status_code == 200:
        raise ConnectRefused(
            f"X's token endpoint failed (HTTP {response.status_code}); the bot is unchanged. Try again.",
            bot_id=bot_id,
            status=502,
        )
    if shown in ("invalid_client", "unauthorized_client"):
        raise ConnectRefused(
            f"X refused the app's credentials ({shown}): check X_CLIENT_ID and X_CLIENT_SECRET.",
            bot_id=bot_id,
            status=502,
        )
    raise ConnectRefused(
        f"X refused the authorization code ({shown or f'HTTP {response.status_code}'}); the bot is unchanged."
        " Start again from the dashboard.",
        bot_id=bot_id,
    )


async def _save_connection(
    pool: asyncpg.Pool,
    cipher: TokenCipher,
    http: httpx.AsyncClient,
    settings: Settings,
    bot_id: str,
    body: dict[str, Any],
) -> ConnectResult:
    expires_in = body.get("expires_in")
    expires_at = (
        datetime.now(UTC) + timedelta(seconds=int(expires_in))
        if isinstance(expires_in, int | float)
        else None
    )
    refresh = body.get("refresh_token")
    scope = body.get("scope") if isinstance(body.get("scope"), str) else None
    async with pool.acquire() as conn, conn.transaction():
        bot = await bots.lock_auth(conn, bot_id)
        if bot is None:
            raise ConnectRefused(f"Bot {bot_id} was deleted meanwhile; nothing was stored.", status=404)
        await store_tokens(
            conn,
            cipher,
            bot_id,
            body["access_token"],
            refresh if isinstance(refresh, str) else None,
            expires_at,
            scope=scope,
        )
        # X task definitions that failed for want of authorization (or of a scope) start afresh.
        resumed = await task_definitions.resume_failing(
            conn, bot_id, list(x_scopes.TASK_SCOPES), NEEDS_NEW_AUTHORIZATION
        )
        task_types = await task_definitions.active_task_types(conn, bot_id)
    scopes = sorted(x_scopes.granted(scope) or [])
    missing = x_scopes.missing(scope, task_types)
    username = await _read_identity(pool, cipher, http, settings, bot_id, bot.plan_tier)
    await write_log(
        pool,
        bot_id,
        "info",
        f"X account {'@' + username if username else '(username not read yet)'} connected"
        + (f"; missing scopes: {' '.join(missing)}" if missing else ""),
        {"event": "x_account_connected", "scopes": scopes, "missing_scopes": missing},
    )
    log.info("bot %s: X account connected (scopes %s)", bot_id, " ".join(scopes) or "unknown")
    return ConnectResult(
        bot_id, username, scopes, missing, bot.auth_state == "needs_reauthorization", resumed
    )


async def _read_identity(
    pool: asyncpg.Pool,
    cipher: TokenCipher,
    http: httpx.AsyncClient,
    settings: Settings,
    bot_id: str,
    plan_tier: str,
) -> str | None:
    """`/2/users/me` through the bot's X client (its quota ledger); best effort: the X handlers ask
    again when `x_user_id` is still empty."""
    x = XClient(
        http=http,
        pool=pool,
        settings=settings,
        tokens=TokenStore(pool, cipher, http, settings),
        bot_id=bot_id,
        plan_tier=plan_tier,
    )
    try:
        me = await x.get_me()
    except (XApiError, NonRetryableTaskError) as error:
        log.warning("bot %s: connected, but /2/users/me failed: %s", bot_id, error)
        return None
    user_id, username = me.get("id"), me.get("username")
    if not isinstance(user_id, str):
        return None
    username = username if isinstance(username, str) else None
    await bots.set_connected_identity(pool, bot_id, user_id, username)
    return username
