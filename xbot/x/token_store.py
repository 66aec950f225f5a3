"""TokenStore: a bot's OAuth 2.0 access token, loaded and decrypted, and a refresh that keeps the new pair.

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

The call itself is xbot.x.token_endpoint's. Token values never appear in exceptions, log rows or reprs.
The token types, `store_tokens` and what a refresh leaves in this process are xbot.x.tokens'.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import httpx

from xbot.crypto.at_rest import TokenCipher
from xbot.errors import NonRetryableTaskError
from xbot.settings import Settings
from xbot.storage import bots
from xbot.storage import tokens as token_rows
from xbot.storage.logs import write_log
from xbot.x import token_endpoint
from xbot.x.errors import ReauthorizationRequiredError
from xbot.x.token_endpoint import TOKEN_ENDPOINT, AnswerLost, client_auth
from xbot.x.tokens import (
    ANSWER_LOST_NOTE,
    NEEDS_REAUTHORIZATION,
    RUNNING_REFRESHES,
    UNSAVED_PAIRS,
    AccessToken,
    Claim,
    NewPair,
    TokenRefreshAnswerLostError,
    TokenSaveError,
    encrypted_pair,
    report_orphan,
)

log = logging.getLogger(__name__)

# Waiting for another refresher's lease: short first polls (a refresh takes ~100 ms), then slower.
POLL_FIRST_SECONDS = 0.05
POLL_MAX_SECONDS = 0.5
LEASE_MARGIN_SECONDS = 5.0

T = TypeVar("T")
# What a lost connection, a refused statement or a time-boxed try raises: worth another try.
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


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
        row = await token_rows.token_use(self._pool, bot_id)
        if row is None:
            raise NonRetryableTaskError(f"bot {bot_id} does not exist")
        if row.auth_state == NEEDS_REAUTHORIZATION:
            raise ReauthorizationRequiredError(
                bot_id, row.refresh_note or "an earlier token refresh was refused by X"
            )
        if row.access_token_enc is None or row.version is None:
            raise ReauthorizationRequiredError(bot_id, "no OAuth tokens stored")
        token = AccessToken(self._cipher.decrypt(row.access_token_enc), row.version, row.expires_at)
        if token.expiring(datetime.now(UTC)):
            return await self.refresh(bot_id, token.version)
        return token

    async def refresh(self, bot_id: str, stale_version: int) -> AccessToken:
        """Replace the pair whose version is `stale_version`; exactly one caller talks to X."""
        client_auth(self._settings, "refresh tokens")  # a configuration error, before anything is claimed
        delay = POLL_FIRST_SECONDS
        while True:
            task = asyncio.create_task(self._attempt(bot_id, stale_version), name=f"token-refresh:{bot_id}")
            RUNNING_REFRESHES.add(task)
            task.add_done_callback(RUNNING_REFRESHES.discard)
            try:
                token = await asyncio.shield(task)
            except asyncio.CancelledError:
                task.add_done_callback(report_orphan)  # the caller left; the refresh goes on
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
        if not isinstance(claim, Claim):
            return claim
        try:
            # Step 2, with no transaction open.
            outcome = await token_endpoint.refresh(
                self._http, self._settings, claim.refresh_token, call_seconds=self._call_seconds
            )
        except AnswerLost as lost:
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

    async def _claim(self, bot_id: str, stale_version: int) -> Claim | AccessToken | None:
        no_refresh_token = "no refresh token stored"
        async with self._pool.acquire() as conn, conn.transaction():
            row = await token_rows.lock_for_refresh(conn, bot_id)
            if row is None:
                raise ReauthorizationRequiredError(bot_id, "no OAuth tokens stored")
            current = AccessToken(self._cipher.decrypt(row.access_token_enc), row.version, row.expires_at)
            if current.version != stale_version and not current.expiring(datetime.now(UTC)):
                return current  # another caller refreshed meanwhile
            if row.auth_state == NEEDS_REAUTHORIZATION:
                raise ReauthorizationRequiredError(
                    bot_id, row.refresh_note or "an earlier token refresh was refused by X"
                )
            if row.refresh_state == "in_flight" and row.leased:
                return None
            if row.refresh_token_enc is None:
                await self.mark_needs_reauthorization(conn, bot_id, no_refresh_token)
                claim = None
            else:
                claim = await self._take_lease(conn, bot_id, row, row.refresh_token_enc)
        if claim is None:  # raised only now: inside the transaction it would undo the mark
            raise ReauthorizationRequiredError(bot_id, no_refresh_token)
        return claim

    async def _take_lease(
        self, conn: asyncpg.Connection, bot_id: str, row: token_rows.RefreshState, refresh_enc: bytes
    ) -> Claim:
        after_lost_answer = row.refresh_state != "idle"
        if row.refresh_state == "in_flight":
            # Its holder never finished (worker killed or stalled while X had the request).
            await self._log_lost_answer(conn, bot_id, "a refresher stopped while waiting for X")
        claim = Claim(uuid.uuid4(), row.version, self._cipher.decrypt(refresh_enc), after_lost_answer)
        await token_rows.take_lease(conn, bot_id, claim.claim_id, self._lease_seconds)
        return claim

    # --- step 3: save -----------------------------------------------------------------------------

    def _new_pair(self, body: dict[str, Any], claim: Claim) -> NewPair:
        new_refresh = body.get("refresh_token")
        expires_in = body.get("expires_in")
        scope = body.get("scope")
        return NewPair(
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

    async def _save(self, bot_id: str, pair: NewPair) -> AccessToken:
        """Commit the pair on its own, retried; on final failure keep it in memory and raise."""
        # Encrypted once: a retry after an unclear commit writes the same bytes.
        encrypted = encrypted_pair(
            self._cipher, pair.access_token, pair.refresh_token, pair.expires_at, pair.scope
        )
        try:
            token = await self._durably(
                "save the refreshed OAuth tokens",
                bot_id,
                lambda conn: self._write_pair(conn, bot_id, pair, encrypted),
            )
        except _DB_ERRORS as error:
            UNSAVED_PAIRS[(id(self._pool), bot_id)] = pair
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
        UNSAVED_PAIRS.pop((id(self._pool), bot_id), None)
        return token

    async def _write_pair(
        self,
        conn: asyncpg.Connection,
        bot_id: str,
        pair: NewPair,
        encrypted: token_rows.EncryptedPair,
    ) -> AccessToken:
        async with conn.transaction():
            # Conditional on `version`: a pair stored meanwhile (an operator's) is newer than ours.
            version = await token_rows.save_refreshed_pair(
                conn, bot_id, encrypted, pair.claim_id, pair.base_version
            )
            if version is None:
                return await self._stored_after_unclear_save(conn, bot_id, pair)
            # A fresh pair from X: whatever refusal a stalled lease's successor recorded is over.
            await bots.set_auth_state(conn, bot_id, "ok", only_if_changed=True)
        log.info("refreshed OAuth tokens of bot %s (version %d)", bot_id, version)
        return AccessToken(pair.access_token, version, pair.expires_at)

    async def _stored_after_unclear_save(
        self, conn: asyncpg.Connection, bot_id: str, pair: NewPair
    ) -> AccessToken:
        row = await token_rows.stored_pair(conn, bot_id)
        if row is None:
            raise ReauthorizationRequiredError(bot_id, "the bot's tokens were deleted during a refresh")
        if row.refresh_claim == pair.claim_id and row.version == pair.base_version + 1:
            return AccessToken(pair.access_token, row.version, pair.expires_at)  # an earlier try committed
        log.info("bot %s got new tokens from elsewhere during a refresh; keeping the stored ones", bot_id)
        return AccessToken(self._cipher.decrypt(row.access_token_enc), row.version, row.expires_at)

    # --- other outcomes ---------------------------------------------------------------------------

    async def _release(self, bot_id: str, claim: Claim) -> None:
        """X did not rotate: hand the claim back (an earlier lost answer stays on record)."""
        await self._best_effort(
            "release the refresh claim",
            bot_id,
            lambda conn: token_rows.release_claim(
                conn, bot_id, claim.claim_id, after_lost_answer=claim.after_lost_answer
            ),
        )

    async def _answer_lost(self, bot_id: str, claim: Claim, what: str) -> None:
        async def record(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                updated = await token_rows.record_answer_lost(conn, bot_id, claim.claim_id, ANSWER_LOST_NOTE)
                if updated:
                    await self._log_lost_answer(conn, bot_id, what)

        # If even this fails, the lease runs out and the next refresher reaches the same conclusion.
        await self._best_effort("record the lost refresh answer", bot_id, record)

    async def _log_lost_answer(self, conn: asyncpg.Connection, bot_id: str, what: str) -> None:
        await token_rows.set_refresh_note(conn, bot_id, ANSWER_LOST_NOTE)
        await write_log(
            conn,
            bot_id,
            "error",
            f"OAuth {ANSWER_LOST_NOTE} ({what}); the next refresh tries it once, and if X refuses it"
            " the bot needs re-authorization",
            {"event": "refresh_answer_lost"},
        )
        log.error("bot %s: OAuth %s (%s)", bot_id, ANSWER_LOST_NOTE, what)

    async def _refused(self, conn: asyncpg.Connection, bot_id: str, claim: Claim, reason: str) -> None:
        async with conn.transaction():
            await token_rows.end_claim(conn, bot_id, claim.claim_id)
            await self.mark_needs_reauthorization(conn, bot_id, reason)

    async def mark_needs_reauthorization(
        self, conn: asyncpg.Pool | asyncpg.Connection, bot_id: str, reason: str
    ) -> None:
        """X tasks of the bot fail non-retryably until `store_tokens` saves a new pair."""
        await bots.set_auth_state(conn, bot_id, NEEDS_REAUTHORIZATION)
        await token_rows.set_refresh_note(conn, bot_id, reason)
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

    def _unsaved(self, bot_id: str) -> NewPair | None:
        pair = UNSAVED_PAIRS.get((id(self._pool), bot_id))
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
