"""OAuth 2.0 user tokens of each bot: encrypted storage, loading, and serialized refresh.

X rotates the refresh token on every refresh and the old one stops working, so a refresh must
(1) happen once even when two activities or two workers need it at the same moment, and (2) save the
new pair before anyone can use the old one again. Both follow from one rule: the refresh runs inside
the transaction that holds the bot's `bot_tokens` row lock (`SELECT ... FOR UPDATE`), across the HTTP
call, and writes the new pair before committing. A waiter that gets the lock afterwards sees a higher
`version` and reuses the new token instead of calling X again.

Token values never appear in exceptions, log rows or reprs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from xbot.crypto import TokenCipher
from xbot.errors import NonRetryableTaskError
from xbot.repositories.logs import write_log
from xbot.settings import Settings
from xbot.x_errors import ReauthorizationRequiredError, XRateLimitedError, XServerError, XTimeoutError

log = logging.getLogger(__name__)

TOKEN_PATH = "/2/oauth2/token"
TOKEN_ENDPOINT = "POST /2/oauth2/token"
REFRESH_MARGIN = timedelta(minutes=1)
NEEDS_REAUTHORIZATION = "needs_reauthorization"


@dataclass(frozen=True)
class AccessToken:
    """A usable access token; `version` identifies which stored pair it came from."""

    value: str = field(repr=False)
    version: int
    expires_at: datetime | None

    def expiring(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at - now <= REFRESH_MARGIN


async def store_tokens(
    pool: asyncpg.Pool | asyncpg.Connection,
    cipher: TokenCipher,
    bot_id: str,
    access_token: str,
    refresh_token: str | None,
    expires_at: datetime | None,
    scope: str | None = None,
) -> int:
    """Save a new token pair (encrypted) and mark the bot authorized again. Returns the new version."""
    access_enc = cipher.encrypt(access_token)
    refresh_enc = cipher.encrypt(refresh_token) if refresh_token is not None else None
    if isinstance(pool, asyncpg.Pool):
        async with pool.acquire() as conn:
            return await _store(conn, bot_id, access_enc, refresh_enc, expires_at, scope)
    return await _store(pool, bot_id, access_enc, refresh_enc, expires_at, scope)


async def _store(
    conn: asyncpg.Connection,
    bot_id: str,
    access_enc: bytes,
    refresh_enc: bytes | None,
    expires_at: datetime | None,
    scope: str | None,
) -> int:
    async with conn.transaction():
        version: int = await conn.fetchval(
            """
            INSERT INTO bot_tokens (bot_id, access_token_enc, refresh_token_enc, expires_at, scope)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (bot_id) DO UPDATE
            SET access_token_enc = EXCLUDED.access_token_enc,
                refresh_token_enc = EXCLUDED.refresh_token_enc,
                expires_at = EXCLUDED.expires_at, scope = EXCLUDED.scope,
                version = bot_tokens.version + 1, updated_at = now()
            RETURNING version
            """,
            bot_id,
            access_enc,
            refresh_enc,
            expires_at,
            scope,
        )
        await conn.execute("UPDATE bots SET auth_state = 'ok', updated_at = now() WHERE id = $1", bot_id)
    return version


class TokenStore:
    """Loads a bot's access token, refreshing it when it expires within a minute or X said 401."""

    def __init__(
        self, pool: asyncpg.Pool, cipher: TokenCipher, http: httpx.AsyncClient, settings: Settings
    ) -> None:
        self._pool = pool
        self._cipher = cipher
        self._http = http
        self._settings = settings

    async def access_token(self, bot_id: str) -> AccessToken:
        row = await self._pool.fetchrow(
            "SELECT b.auth_state, t.access_token_enc, t.version, t.expires_at"
            " FROM bots b LEFT JOIN bot_tokens t ON t.bot_id = b.id WHERE b.id = $1",
            bot_id,
        )
        if row is None:
            raise NonRetryableTaskError(f"bot {bot_id} does not exist")
        if row["auth_state"] == NEEDS_REAUTHORIZATION:
            raise ReauthorizationRequiredError(bot_id, "an earlier token refresh was refused by X")
        if row["access_token_enc"] is None:
            raise ReauthorizationRequiredError(bot_id, "no OAuth tokens stored")
        token = AccessToken(self._cipher.decrypt(row["access_token_enc"]), row["version"], row["expires_at"])
        if token.expiring(datetime.now(UTC)):
            return await self.refresh(bot_id, token.version)
        return token

    async def refresh(self, bot_id: str, stale_version: int) -> AccessToken:
        """Replace the pair whose version is `stale_version`; exactly one caller talks to X."""
        revoked_reason = "refused"
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT access_token_enc, refresh_token_enc, version, expires_at"
                " FROM bot_tokens WHERE bot_id = $1 FOR UPDATE",
                bot_id,
            )
            if row is None:
                raise ReauthorizationRequiredError(bot_id, "no OAuth tokens stored")
            current = AccessToken(
                self._cipher.decrypt(row["access_token_enc"]), row["version"], row["expires_at"]
            )
            if current.version != stale_version and not current.expiring(datetime.now(UTC)):
                return current  # another caller refreshed while we waited for the lock
            if row["refresh_token_enc"] is None:
                revoked_reason = "no refresh token stored"
            else:
                outcome = await self._call_token_endpoint(self._cipher.decrypt(row["refresh_token_enc"]))
                if isinstance(outcome, str):
                    revoked_reason = outcome
                else:
                    return await self._save_refreshed(conn, bot_id, outcome, row["refresh_token_enc"])
            await self.mark_needs_reauthorization(conn, bot_id, revoked_reason)
        raise ReauthorizationRequiredError(bot_id, revoked_reason)

    async def _save_refreshed(
        self, conn: asyncpg.Connection, bot_id: str, body: dict[str, Any], old_refresh_enc: bytes
    ) -> AccessToken:
        access = body["access_token"]
        new_refresh = body.get("refresh_token")
        refresh_enc = self._cipher.encrypt(new_refresh) if isinstance(new_refresh, str) else old_refresh_enc
        expires_in = body.get("expires_in")
        expires_at = (
            datetime.now(UTC) + timedelta(seconds=int(expires_in))
            if isinstance(expires_in, int | float)
            else None
        )
        version: int = await conn.fetchval(
            """
            UPDATE bot_tokens
            SET access_token_enc = $2, refresh_token_enc = $3, expires_at = $4,
                scope = coalesce($5, scope), version = version + 1, updated_at = now()
            WHERE bot_id = $1
            RETURNING version
            """,
            bot_id,
            self._cipher.encrypt(access),
            refresh_enc,
            expires_at,
            body.get("scope") if isinstance(body.get("scope"), str) else None,
        )
        log.info("refreshed OAuth tokens of bot %s (version %d)", bot_id, version)
        return AccessToken(access, version, expires_at)

    async def mark_needs_reauthorization(
        self, conn: asyncpg.Pool | asyncpg.Connection, bot_id: str, reason: str
    ) -> None:
        """X tasks of the bot fail non-retryably until `store_tokens` saves a new pair."""
        await conn.execute(
            "UPDATE bots SET auth_state = $2, updated_at = now() WHERE id = $1", bot_id, NEEDS_REAUTHORIZATION
        )
        await write_log(
            conn,
            bot_id,
            "error",
            f"X refused the OAuth refresh ({reason}): the bot needs re-authorization;"
            " X tasks fail until new tokens are stored",
            {"event": "needs_reauthorization", "reason": reason},
        )
        log.warning("bot %s needs re-authorization: %s", bot_id, reason)

    async def _call_token_endpoint(self, refresh_token: str) -> dict[str, Any] | str:
        """The new token body, or the reason X gave for refusing the refresh token for good."""
        client_id = self._settings.x_client_id
        secret = self._settings.x_client_secret
        if not client_id or secret is None:
            raise NonRetryableTaskError("X_CLIENT_ID and X_CLIENT_SECRET must be set to refresh tokens")
        try:
            response = await self._http.post(
                self._settings.x_api_base_url + TOKEN_PATH,
                data={"grant_type": "refresh_token", "refresh_token": refresh_token},
                auth=httpx.BasicAuth(client_id, secret.get_secret_value()),
                timeout=self._settings.x_request_timeout_seconds,
            )
        except httpx.TimeoutException:
            raise XTimeoutError(TOKEN_ENDPOINT, "timed out") from None
        except httpx.HTTPError as error:
            raise XServerError(TOKEN_ENDPOINT, f"request failed ({type(error).__name__})") from None
        return _token_outcome(response)


def _token_outcome(response: httpx.Response) -> dict[str, Any] | str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 200:
        if isinstance(body, dict) and isinstance(body.get("access_token"), str):
            return body
        raise XServerError(TOKEN_ENDPOINT, "malformed token response", response.status_code)
    if response.status_code == 429:
        reset = response.headers.get("x-rate-limit-reset", "")
        reset_at = (
            datetime.fromtimestamp(int(reset), UTC)
            if reset.isdigit()
            else datetime.now(UTC) + timedelta(minutes=1)
        )
        raise XRateLimitedError(TOKEN_ENDPOINT, reset_at, sent=True)
    if response.status_code >= 500:
        raise XServerError(TOKEN_ENDPOINT, f"HTTP {response.status_code}", response.status_code)
    # Only the OAuth error code and description: the body of a token response is never echoed.
    error = body.get("error") if isinstance(body, dict) else None
    description = body.get("error_description") if isinstance(body, dict) else None
    description_text = description.lower() if isinstance(description, str) else ""
    if error == "invalid_grant" or (error == "invalid_request" and "token" in description_text):
        return f"{error}"
    if error in ("invalid_client", "unauthorized_client") or response.status_code == 401:
        raise NonRetryableTaskError(
            f"X rejected the client credentials (X_CLIENT_ID/X_CLIENT_SECRET): {error or response.status_code}"
        )
    raise NonRetryableTaskError(f"X token refresh failed: HTTP {response.status_code} {error or ''}".strip())
