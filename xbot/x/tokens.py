"""OAuth 2.0 user tokens of each bot: the access token a request carries, saving a new pair (encrypted),
the errors of a refresh, and what a refresh leaves in this process (pairs waiting to be saved, tasks
still running).

xbot.x.token_store's TokenStore loads and refreshes the tokens; these are the pieces it shares with its
callers (`store_tokens` after an authorization, `drain_refreshes` at shutdown), kept apart so each
module stays readable.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from xbot.crypto.at_rest import TokenCipher
from xbot.errors import TaskError
from xbot.storage import bots
from xbot.storage import tokens as token_rows
from xbot.x.errors import XTimeoutError

log = logging.getLogger(__name__)

REFRESH_MARGIN = timedelta(minutes=1)
NEEDS_REAUTHORIZATION = "needs_reauthorization"
ANSWER_LOST_NOTE = "refresh answer lost; the old refresh token may be spent"


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
class Claim:
    """This caller's right to call X for one bot; `base_version` is the pair being replaced."""

    claim_id: uuid.UUID
    base_version: int
    refresh_token: str = field(repr=False)
    after_lost_answer: bool


@dataclass(frozen=True)
class NewPair:
    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: datetime | None
    scope: str | None
    claim_id: uuid.UUID
    base_version: int
    # Keeps the pool alive, so `id(pool)` in the key of `UNSAVED_PAIRS` cannot be reused meanwhile.
    pool: asyncpg.Pool = field(repr=False, compare=False)


# Pairs X issued whose save failed every try, by (id(pool), bot_id): saved on the bot's next token use.
UNSAVED_PAIRS: dict[tuple[int, str], NewPair] = {}
# Refresh tasks still running, some perhaps for a caller that was cancelled; kept so they are not
# garbage-collected, and so shutdown (and tests) can wait for them.
RUNNING_REFRESHES: set[asyncio.Task[Any]] = set()


async def drain_refreshes(timeout: float | None = None) -> None:
    """Wait for refreshes still saving a pair (worker shutdown, tests)."""
    if RUNNING_REFRESHES:
        await asyncio.wait(set(RUNNING_REFRESHES), timeout=timeout)


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
    encrypted = encrypted_pair(cipher, access_token, refresh_token, expires_at, scope)
    async with _connection(pool) as conn, conn.transaction():
        version = await token_rows.store_pair(conn, bot_id, encrypted)
        await bots.set_auth_state(conn, bot_id, "ok")
    return version


def encrypted_pair(
    cipher: TokenCipher, access: str, refresh: str | None, expires_at: datetime | None, scope: str | None
) -> token_rows.EncryptedPair:
    return token_rows.EncryptedPair(
        cipher.encrypt(access), cipher.encrypt(refresh) if refresh is not None else None, expires_at, scope
    )


@asynccontextmanager
async def _connection(db: asyncpg.Pool | asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db


def report_orphan(task: asyncio.Task[Any]) -> None:
    """A refresh that outlived its cancelled caller: say how it ended (never with a token)."""
    if task.cancelled():
        log.warning("a token refresh was cancelled along with its worker")
        return
    error = task.exception()
    if error is not None:
        log.warning("a token refresh finished after its caller left: %s", error)
