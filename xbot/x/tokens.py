"""OAuth 2.0 user tokens of each bot: encrypted storage, loading, and a refresh that keeps the new pair.

X rotates the refresh token on every refresh and the old one is spent the moment X accepts it, so the new
pair must reach the database whatever happens to the caller afterwards. A refresh runs in three steps:

1. Claim: a short transaction locks the bot's `bot_tokens` row (`FOR UPDATE`), checks that nobody
   refreshed meanwhile (`version`) and commits `refresh_state = 'in_flight'` with a lease. A caller that
   finds a live lease waits for the pair instead of calling X: one refresh call under a race.
2. Call X, with no transaction open (a row lock held across the call would block step 3's own commit).
3. Save the new pair in its own short transaction, retried with backoff, before anything else can fail.

Steps 1-3 run in a task the caller awaits through `asyncio.shield`: a cancelled activity (timeout, Temporal
cancellation) stops waiting but the task still saves the pair. A pair that cannot be saved after every try
is kept in this process's memory and saved on the bot's next token use.

When the request left but its answer never came (client timeout, reset connection, a worker killed while
waiting: its lease runs out), the row says `answer_lost`: the stored refresh token may be spent. The next
refresh tries it once; X refusing it puts the bot in `needs_reauthorization` with that reason.

Public clients (no `X_CLIENT_SECRET`) send `client_id` in the form; confidential ones use Basic auth.
Token values never appear in exceptions, log rows or reprs.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import httpx

from xbot.crypto.at_rest import TokenCipher
from xbot.errors import NonRetryableTaskError, TaskError
from xbot.settings import Settings
from xbot.storage.bots import set_auth_state
from xbot.storage.logs import write_log
from xbot.x.errors import ReauthorizationRequiredError, XRateLimitedError, XServerError, XTimeoutError

log = logging.getLogger(__name__)

TOKEN_PATH = "/2/oauth2/token"
TOKEN_ENDPOINT = "POST /2/oauth2/token"
REFRESH_MARGIN = timedelta(minutes=1)
NEEDS_REAUTHORIZATION = "needs_reauthorization"
ANSWER_LOST_NOTE = "refresh answer lost; the old refresh token may be spent"

# Waiting for another refresher's lease: short first polls (a refresh takes ~100 ms), then slower.
POLL_FIRST_SECONDS = 0.05
POLL_MAX_SECONDS = 0.5
LEASE_MARGIN_SECONDS = 5.0

T = TypeVar("T")
# What a lost connection, a refused statement or a time-boxed try raises: worth another try.
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class TokenRefreshAnswerLostError(XTimeoutError):
    """The refresh request left but no usable answer came back; retryable (the next try says more)."""


class TokenSaveError(TaskError):
    """X issued a new pair but it could not be saved; retryable: the pair waits in memory."""


@dataclass(frozen=True)
class AccessToken:
    """A usable access token; `version` identifies which stored pair it came from."""

    value: str = field(repr=False)
    version: int
    expires_at: datetime | None

    def expiring(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at - now <= REFRESH_MARGIN


@dataclass(frozen=True)
class _Claim:
    """This caller's right to call X for one bot; `base_version` is the pair being replaced."""

    claim_id: uuid.UUID
    base_version: int
    refresh_token: str = field(repr=False)
    after_lost_answer: bool


@dataclass(frozen=True)
class _NewPair:
    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: datetime | None
    scope: str | None
    claim_id: uuid.UUID
    base_version: int
    # Keeps the pool alive, so `id(pool)` in the key of `_UNSAVED` cannot be reused meanwhile.
    pool: asyncpg.Pool = field(repr=False, compare=False)


class _AnswerLost(Exception):
    """The refresh request may have reached X, but no usable answer arrived."""


# Pairs X issued whose save failed every try, by (id(pool), bot_id): saved on the bot's next token use.
_UNSAVED: dict[tuple[int, str], _NewPair] = {}
# Refresh tasks still running, some perhaps for a caller that was cancelled; kept so they are not
# garbage-collected, and so shutdown (and tests) can wait for them.
_RUNNING: set[asyncio.Task[Any]] = set()


def client_auth(settings: Settings, purpose: str) -> tuple[str, httpx.Auth | None]:
    """The client id, and Basic auth for a confidential client (None: a public one)."""
    client_id = settings.x_client_id
    if not client_id:
        raise NonRetryableTaskError(f"X_CLIENT_ID must be set to {purpose}")
    secret = settings.x_client_secret
    if secret is None or not secret.get_secret_value():
        return client_id, None  # a public (PKCE-only) client
    return client_id, httpx.BasicAuth(client_id, secret.get_secret_value())


async def drain_refreshes(timeout: float | None = None) -> None:
    """Wait for refreshes still saving a pair (worker shutdown, tests)."""
    if _RUNNING:
        await asyncio.wait(set(_RUNNING), timeout=timeout)


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
        # An operator's new pair replaces whatever a refresh was doing: its lease and notes go too.
        version: int = await conn.fetchval(
            """
            INSERT INTO bot_tokens (bot_id, access_token_enc, refresh_token_enc, expires_at, scope)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (bot_id) DO UPDATE
            SET access_token_enc = EXCLUDED.access_token_enc,
                refresh_token_enc = EXCLUDED.refresh_token_enc,
                expires_at = EXCLUDED.expires_at, scope = EXCLUDED.scope,
                version = bot_tokens.version + 1, updated_at = now(),
                refresh_state = 'idle', refresh_claim = NULL, refresh_lease_until = NULL,
                refresh_note = NULL
            RETURNING version
            """,
            bot_id,
            access_enc,
            refresh_enc,
            expires_at,
            scope,
        )
        await set_auth_state(conn, bot_id, "ok")
    return version


class TokenStore:
    """Loads a bot's access token, refreshing it when it expires within a minute or X said 401."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        cipher: TokenCipher,
        http: httpx.AsyncClient,
        settings: Settings,
        *,
        save_tries: int = 5,
        save_backoff_seconds: float = 0.2,
        save_try_seconds: float = 5.0,
    ) -> None:
        self._pool = pool
        self._cipher = cipher
        self._http = http
        self._settings = settings
        self._save_tries = save_tries
        self._save_backoff = save_backoff_seconds
        self._save_try_seconds = save_try_seconds
        # httpx's timeout is per phase (connect, write, read); this bounds the whole exchange.
        self._call_seconds = 2 * settings.x_request_timeout_seconds
        save_budget = save_tries * save_try_seconds + save_backoff_seconds * (2**save_tries)
        # A live lease means its holder is still working: it never outlasts its own call and save.
        self._lease_seconds = self._call_seconds + save_budget + LEASE_MARGIN_SECONDS

    async def access_token(self, bot_id: str) -> AccessToken:
        if self._unsaved(bot_id) is not None:
            return await self.refresh(bot_id, -1)
        row = await self._pool.fetchrow(
            "SELECT b.auth_state, t.access_token_enc, t.version, t.expires_at, t.refresh_note"
            " FROM bots b LEFT JOIN bot_tokens t ON t.bot_id = b.id WHERE b.id = $1",
            bot_id,
        )
        if row is None:
            raise NonRetryableTaskError(f"bot {bot_id} does not exist")
        if row["auth_state"] == NEEDS_REAUTHORIZATION:
            raise ReauthorizationRequiredError(
                bot_id, row["refresh_note"] or "an earlier token refresh was refused by X"
            )
        if row["access_token_enc"] is None:
            raise ReauthorizationRequiredError(bot_id, "no OAuth tokens stored")
        token = AccessToken(self._cipher.decrypt(row["access_token_enc"]), row["version"], row["expires_at"])
        if token.expiring(datetime.now(UTC)):
            return await self.refresh(bot_id, token.version)
        return token

    async def refresh(self, bot_id: str, stale_version: int) -> AccessToken:
        """Replace the pair whose version is `stale_version`; exactly one caller talks to X."""
        self._client_auth()  # a configuration error, before anything is claimed
        delay = POLL_FIRST_SECONDS
        while True:
            task = asyncio.create_task(self._attempt(bot_id, stale_version), name=f"token-refresh:{bot_id}")
            _RUNNING.add(task)
            task.add_done_callback(_RUNNING.discard)
            try:
                token = await asyncio.shield(task)
            except asyncio.CancelledError:
                task.add_done_callback(_report_orphan)  # the caller left; the refresh goes on
                raise
            if token is not None:
                return token
            await asyncio.sleep(delay)  # another caller holds the lease: wait for its pair
            delay = min(delay * 2, POLL_MAX_SECONDS)

    async def _attempt(self, bot_id: str, stale_version: int) -> AccessToken | None:
        """One pass: the usable token, or None while another caller's refresh is in flight."""
        unsaved = self._unsaved(bot_id)
        if unsaved is not None:
            return await self._save(bot_id, unsaved)
        claim = await self._claim(bot_id, stale_version)
        if not isinstance(claim, _Claim):
            return claim
        try:
            outcome = await self._call_token_endpoint(claim.refresh_token)
        except _AnswerLost as lost:
            await self._answer_lost(bot_id, claim, str(lost))
            raise TokenRefreshAnswerLostError(
                TOKEN_ENDPOINT,
                f"{lost}; {ANSWER_LOST_NOTE} (the next refresh tries it once)",
            ) from None
        except Exception:
            # X answered with an error or the request never left: the stored refresh token still works.
            await self._release(bot_id, claim)
            raise
        if isinstance(outcome, str):
            reason = outcome
            if claim.after_lost_answer:
                reason = f"{ANSWER_LOST_NOTE}, and X refused it ({outcome})"
            await self._durably(
                "mark the bot as needing re-authorization",
                bot_id,
                lambda conn: self._refused(conn, bot_id, claim, reason),
            )
            raise ReauthorizationRequiredError(bot_id, reason)
        token = await self._save(bot_id, self._new_pair(body=outcome, claim=claim))
        if claim.after_lost_answer:
            await self._best_effort(
                "log the recovery",
                bot_id,
                lambda conn: write_log(
                    conn,
                    bot_id,
                    "info",
                    "OAuth refresh after a lost answer succeeded: the old refresh token was still good",
                    {"event": "refresh_answer_recovered"},
                ),
            )
        return token

    # --- step 1: claim --------------------------------------------------------------------------

    async def _claim(self, bot_id: str, stale_version: int) -> _Claim | AccessToken | None:
        no_refresh_token = "no refresh token stored"
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """
                SELECT t.access_token_enc, t.refresh_token_enc, t.version, t.expires_at,
                       t.refresh_state, t.refresh_note, coalesce(t.refresh_lease_until > now(), false) AS leased,
                       b.auth_state
                FROM bot_tokens t JOIN bots b ON b.id = t.bot_id
                WHERE t.bot_id = $1 FOR UPDATE OF t
                """,
                bot_id,
            )
            if row is None:
                raise ReauthorizationRequiredError(bot_id, "no OAuth tokens stored")
            current = AccessToken(
                self._cipher.decrypt(row["access_token_enc"]), row["version"], row["expires_at"]
            )
            if current.version != stale_version and not current.expiring(datetime.now(UTC)):
                return current  # another caller refreshed meanwhile
            if row["auth_state"] == NEEDS_REAUTHORIZATION:
                raise ReauthorizationRequiredError(
                    bot_id, row["refresh_note"] or "an earlier token refresh was refused by X"
                )
            if row["refresh_state"] == "in_flight" and row["leased"]:
                return None
            if row["refresh_token_enc"] is None:
                await self.mark_needs_reauthorization(conn, bot_id, no_refresh_token)
                claim = None
            else:
                claim = await self._take_lease(conn, bot_id, row)
        if claim is None:  # raised only now: inside the transaction it would undo the mark
            raise ReauthorizationRequiredError(bot_id, no_refresh_token)
        return claim

    async def _take_lease(self, conn: asyncpg.Connection, bot_id: str, row: asyncpg.Record) -> _Claim:
        after_lost_answer = row["refresh_state"] != "idle"
        if row["refresh_state"] == "in_flight":
            # Its holder never finished (worker killed or stalled while X had the request).
            await self._log_lost_answer(conn, bot_id, "a refresher stopped while waiting for X")
        claim = _Claim(
            uuid.uuid4(),
            row["version"],
            self._cipher.decrypt(row["refresh_token_enc"]),
            after_lost_answer,
        )
        await conn.execute(
            """
            UPDATE bot_tokens
            SET refresh_state = 'in_flight', refresh_claim = $2,
                refresh_lease_until = now() + make_interval(secs => $3)
            WHERE bot_id = $1
            """,
            bot_id,
            claim.claim_id,
            self._lease_seconds,
        )
        return claim

    # --- step 2: call X ---------------------------------------------------------------------------

    def _client_auth(self) -> tuple[str, httpx.Auth | None]:
        return client_auth(self._settings, "refresh tokens")

    async def _call_token_endpoint(self, refresh_token: str) -> dict[str, Any] | str:
        """The new token body, or the reason X gave for refusing the refresh token for good."""
        client_id, auth = self._client_auth()
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if auth is None:
            form["client_id"] = client_id  # X's docs: public clients name themselves in the body
        try:
            async with asyncio.timeout(self._call_seconds):
                response = await self._http.post(
                    self._settings.x_api_base_url + TOKEN_PATH,
                    data=form,
                    auth=auth if auth is not None else httpx.Auth(),  # httpx.Auth(): no header at all
                    timeout=self._settings.x_request_timeout_seconds,
                )
        except (httpx.ConnectTimeout, httpx.PoolTimeout):
            raise XTimeoutError(TOKEN_ENDPOINT, "timed out before the request was sent") from None
        except (httpx.ConnectError, httpx.UnsupportedProtocol) as error:
            raise XServerError(TOKEN_ENDPOINT, f"request not sent ({type(error).__name__})") from None
        except (httpx.TimeoutException, TimeoutError):
            raise _AnswerLost("timed out waiting for the answer") from None
        except httpx.HTTPError as error:
            raise _AnswerLost(f"no answer ({type(error).__name__})") from None
        return _token_outcome(response)

    # --- step 3: save -----------------------------------------------------------------------------

    def _new_pair(self, body: dict[str, Any], claim: _Claim) -> _NewPair:
        new_refresh = body.get("refresh_token")
        expires_in = body.get("expires_in")
        scope = body.get("scope")
        return _NewPair(
            access_token=body["access_token"],
            refresh_token=new_refresh if isinstance(new_refresh, str) else None,
            expires_at=(
                datetime.now(UTC) + timedelta(seconds=int(expires_in))
                if isinstance(expires_in, int | float)
                else None
            ),
            scope=scope if isinstance(scope, str) else None,
            claim_id=claim.claim_id,
            base_version=claim.base_version,
            pool=self._pool,
        )

    async def _save(self, bot_id: str, pair: _NewPair) -> AccessToken:
        """Commit the pair on its own, retried; on final failure keep it in memory and raise."""
        # Encrypted once: a retry after an unclear commit writes the same bytes.
        access_enc = self._cipher.encrypt(pair.access_token)
        refresh_enc = self._cipher.encrypt(pair.refresh_token) if pair.refresh_token is not None else None
        try:
            token = await self._durably(
                "save the refreshed OAuth tokens",
                bot_id,
                lambda conn: self._write_pair(conn, bot_id, pair, access_enc, refresh_enc),
            )
        except _DB_ERRORS as error:
            _UNSAVED[(id(self._pool), bot_id)] = pair
            log.critical(
                "X issued new OAuth tokens for bot %s but saving them failed %d times (%s): they are kept"
                " in this process's memory until saved; if it stops first, the bot needs re-authorization",
                bot_id,
                self._save_tries,
                type(error).__name__,
            )
            raise TokenSaveError(
                f"bot {bot_id}: X issued new OAuth tokens but saving them failed {self._save_tries} times"
                f" ({type(error).__name__}); kept in this worker's memory and saved on the next try"
            ) from None
        _UNSAVED.pop((id(self._pool), bot_id), None)
        return token

    async def _write_pair(
        self,
        conn: asyncpg.Connection,
        bot_id: str,
        pair: _NewPair,
        access_enc: bytes,
        refresh_enc: bytes | None,
    ) -> AccessToken:
        async with conn.transaction():
            # Conditional on `version`: a pair stored meanwhile (an operator's) is newer than ours.
            version: int | None = await conn.fetchval(
                """
                UPDATE bot_tokens
                SET access_token_enc = $2, refresh_token_enc = coalesce($3, refresh_token_enc),
                    expires_at = $4, scope = coalesce($5, scope), version = version + 1,
                    refresh_state = 'idle', refresh_claim = $6, refresh_lease_until = NULL,
                    refresh_note = NULL, updated_at = now()
                WHERE bot_id = $1 AND version = $7
                RETURNING version
                """,
                bot_id,
                access_enc,
                refresh_enc,
                pair.expires_at,
                pair.scope,
                pair.claim_id,
                pair.base_version,
            )
            if version is None:
                return await self._stored_after_unclear_save(conn, bot_id, pair)
            # A fresh pair from X: whatever refusal a stalled lease's successor recorded is over.
            await set_auth_state(conn, bot_id, "ok", only_if_changed=True)
        log.info("refreshed OAuth tokens of bot %s (version %d)", bot_id, version)
        return AccessToken(pair.access_token, version, pair.expires_at)

    async def _stored_after_unclear_save(
        self, conn: asyncpg.Connection, bot_id: str, pair: _NewPair
    ) -> AccessToken:
        row = await conn.fetchrow(
            "SELECT access_token_enc, version, expires_at, refresh_claim FROM bot_tokens WHERE bot_id = $1",
            bot_id,
        )
        if row is None:
            raise ReauthorizationRequiredError(bot_id, "the bot's tokens were deleted during a refresh")
        if row["refresh_claim"] == pair.claim_id and row["version"] == pair.base_version + 1:
            return AccessToken(pair.access_token, row["version"], pair.expires_at)  # an earlier try committed
        log.info("bot %s got new tokens from elsewhere during a refresh; keeping the stored ones", bot_id)
        return AccessToken(self._cipher.decrypt(row["access_token_enc"]), row["version"], row["expires_at"])

    # --- other outcomes ---------------------------------------------------------------------------

    async def _release(self, bot_id: str, claim: _Claim) -> None:
        """X did not rotate: hand the claim back (an earlier lost answer stays on record)."""
        await self._best_effort(
            "release the refresh claim",
            bot_id,
            lambda conn: conn.execute(
                """
                UPDATE bot_tokens
                SET refresh_state = CASE WHEN $3 THEN 'answer_lost' ELSE 'idle' END,
                    refresh_lease_until = NULL
                WHERE bot_id = $1 AND refresh_claim = $2 AND refresh_state = 'in_flight'
                """,
                bot_id,
                claim.claim_id,
                claim.after_lost_answer,
            ),
        )

    async def _answer_lost(self, bot_id: str, claim: _Claim, what: str) -> None:
        async def record(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                updated = await conn.fetchval(
                    """
                    UPDATE bot_tokens
                    SET refresh_state = 'answer_lost', refresh_lease_until = NULL, refresh_note = $3
                    WHERE bot_id = $1 AND refresh_claim = $2 AND refresh_state = 'in_flight'
                    RETURNING 1
                    """,
                    bot_id,
                    claim.claim_id,
                    ANSWER_LOST_NOTE,
                )
                if updated:
                    await self._log_lost_answer(conn, bot_id, what)

        # If even this fails, the lease runs out and the next refresher reaches the same conclusion.
        await self._best_effort("record the lost refresh answer", bot_id, record)

    async def _log_lost_answer(self, conn: asyncpg.Connection, bot_id: str, what: str) -> None:
        await conn.execute(
            "UPDATE bot_tokens SET refresh_note = $2 WHERE bot_id = $1", bot_id, ANSWER_LOST_NOTE
        )
        await write_log(
            conn,
            bot_id,
            "error",
            f"OAuth {ANSWER_LOST_NOTE} ({what}); the next refresh tries it once, and if X refuses it"
            " the bot needs re-authorization",
            {"event": "refresh_answer_lost"},
        )
        log.error("bot %s: OAuth %s (%s)", bot_id, ANSWER_LOST_NOTE, what)

    async def _refused(self, conn: asyncpg.Connection, bot_id: str, claim: _Claim, reason: str) -> None:
        async with conn.transaction():
            await conn.execute(
                """
                UPDATE bot_tokens SET refresh_state = 'idle', refresh_lease_until = NULL
                WHERE bot_id = $1 AND refresh_claim = $2
                """,
                bot_id,
                claim.claim_id,
            )
            await self.mark_needs_reauthorization(conn, bot_id, reason)

    async def mark_needs_reauthorization(
        self, conn: asyncpg.Pool | asyncpg.Connection, bot_id: str, reason: str
    ) -> None:
        """X tasks of the bot fail non-retryably until `store_tokens` saves a new pair."""
        await set_auth_state(conn, bot_id, NEEDS_REAUTHORIZATION)
        await conn.execute("UPDATE bot_tokens SET refresh_note = $2 WHERE bot_id = $1", bot_id, reason)
        await write_log(
            conn,
            bot_id,
            "error",
            f"X refused the OAuth refresh ({reason}): the bot needs re-authorization;"
            " X tasks fail until new tokens are stored",
            {"event": "needs_reauthorization", "reason": reason},
        )
        log.warning("bot %s needs re-authorization: %s", bot_id, reason)

    # --- plumbing ---------------------------------------------------------------------------------

    def _unsaved(self, bot_id: str) -> _NewPair | None:
        pair = _UNSAVED.get((id(self._pool), bot_id))
        return pair if pair is not None and pair.pool is self._pool else None

    async def _durably(
        self, what: str, bot_id: str, write: Callable[[asyncpg.Connection], Awaitable[T]]
    ) -> T:
        """Run `write` on a pooled connection, retried with backoff; each try is time-boxed."""
        delay = self._save_backoff
        for number in range(1, self._save_tries):
            try:
                async with asyncio.timeout(self._save_try_seconds), self._pool.acquire() as conn:
                    return await write(conn)
            except _DB_ERRORS as error:
                log.warning(
                    "bot %s: could not %s (try %d of %d: %s); retrying",
                    bot_id,
                    what,
                    number,
                    self._save_tries,
                    _db_error(error),
                )
            await asyncio.sleep(delay)
            delay *= 2
        async with asyncio.timeout(self._save_try_seconds), self._pool.acquire() as conn:
            return await write(conn)

    async def _best_effort(
        self, what: str, bot_id: str, write: Callable[[asyncpg.Connection], Awaitable[Any]]
    ) -> None:
        try:
            await self._durably(what, bot_id, write)
        except _DB_ERRORS as error:
            log.error("bot %s: could not %s (%s)", bot_id, what, _db_error(error))


def _db_error(error: BaseException) -> str:
    """The type and SQLSTATE only: never a parameter's value."""
    code = getattr(error, "sqlstate", None)
    return f"{type(error).__name__} {code}" if code else type(error).__name__


def _report_orphan(task: asyncio.Task[Any]) -> None:
    """A refresh that outlived its cancelled caller: say how it ended (never with a token)."""
    if task.cancelled():
        log.warning("a token refresh was cancelled along with its worker")
        return
    error = task.exception()
    if error is not None:
        log.warning("a token refresh finished after its caller left: %s", error)


def _token_outcome(response: httpx.Response) -> dict[str, Any] | str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 200:
        if isinstance(body, dict) and isinstance(body.get("access_token"), str):
            return body
        # X accepted the refresh token (200) but we cannot read the new one: as good as no answer.
        raise _AnswerLost("malformed token response")
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
            "X rejected the client credentials (X_CLIENT_ID, and X_CLIENT_SECRET for a confidential"
            f" client): {error or response.status_code}"
        )
    raise NonRetryableTaskError(f"X token refresh failed: HTTP {response.status_code} {error or ''}".strip())
