"""The quota ledger: every X window that can refuse a bot's request, and slots reserved before sending.

Windows, per endpoint key (`mentions`, `create_post`, ...):

| scope | window | fed by | table |
| --- | --- | --- | --- |
| bot | the plan's (15m or 24h) | `x-rate-limit-*`, else the plan's static limit | `rate_limit_tracking` |
| bot | 24h | `x-user-limit-24hour-*` | `quota_windows` |
| app | 24h | `x-app-limit-24hour-*` | `quota_windows` |
| app | 15m | a 429 while every window X described still had room | `quota_windows` |
| app or bot | 24h / month | a 429 with X's `usage-capped` problem | `quota_windows` |

App windows belong to the X app (`X_CLIENT_ID`) and bind every bot of it. A request first reserves
one slot in each live window of its endpoint, in one transaction holding the windows' row locks, so
of N concurrent reservations against k free slots exactly k succeed. Then it settles with X's answer
(X's numbers replace ours), or releases its slot when it was never sent. A slot not settled within
its lease (a worker died mid-request) stops counting. The ledger's SQL is in xbot.storage.quota_windows
and xbot.storage.rate_limit_tracking; what an answer of X says is read in xbot.x.quota_readings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

import asyncpg

from xbot.storage import quota_windows, rate_limit_tracking
from xbot.storage.quota_windows import LedgerKey, LedgerRow, Scope, Source, WindowKind
from xbot.x.quota_readings import Observation, Reading
from xbot.x.rate_limits import FIFTEEN_MINUTES, static_limit

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection

# Bots of a deployment without X_CLIENT_ID still share one app.
DEFAULT_APP_KEY = "default"
DEFAULT_LEASE = timedelta(minutes=2)
_WINDOW_ORDER: dict[str, int] = {"15m": 0, "24h": 1, "month": 2}


def app_key(client_id: str | None) -> str:
    """The key app-wide windows are stored under: the OAuth client id (public, not a secret)."""
    return client_id or DEFAULT_APP_KEY


def window_kind(length: timedelta) -> WindowKind:
    return "15m" if length <= FIFTEEN_MINUTES else "24h"


# --------------------------------------------------------------------------- the ledger's state


@dataclass(frozen=True)
class Window:
    """A window as the ledger knows it; `in_flight` are reserved slots not settled yet."""

    scope: Scope
    endpoint: str
    window: WindowKind
    limit: int | None
    remaining: int
    reset_at: datetime | None
    in_flight: int = 0
    reason: str | None = None
    source: Source = "x-rate-limit"

    @property
    def available(self) -> int:
        return max(self.remaining - self.in_flight, 0)

    def describe(self) -> str:
        limit = "?" if self.limit is None else str(self.limit)
        text = f"{self.scope} {self.window} window of {self.endpoint}: {self.available} of {limit} left"
        return f"{text} ({self.reason})" if self.reason else text


class QuotaExhausted(Exception):
    """No slot: `reset_at` is when every window that refused has reset."""

    def __init__(self, blocking: Sequence[Window]) -> None:
        self.blocking = list(blocking)
        self.reset_at: datetime = max(w.reset_at for w in blocking if w.reset_at is not None)
        super().__init__("; ".join(w.describe() for w in blocking))


@dataclass(frozen=True)
class Reservation:
    """One slot held in the endpoint window and in each ledger window listed."""

    bot_id: str
    app: str
    endpoint: str
    plan_tier: str
    ledger: tuple[LedgerKey, ...] = field(default_factory=tuple)


def _live_reserved(reserved: int, reserved_until: datetime | None, now: datetime) -> int:
    return reserved if reserved_until is not None and reserved_until > now else 0


def _owner(scope: Scope, bot_id: str, app: str) -> str:
    return bot_id if scope == "bot" else app


def _ledger_order(key: LedgerKey) -> tuple[str, str, int]:
    """The order every transaction locks ledger rows in (as `ORDER BY scope, owner, window_kind`)."""
    return key[0], key[1], _WINDOW_ORDER[key[2]]


async def reserve(
    pool: asyncpg.Pool,
    *,
    bot_id: str,
    app: str,
    endpoint: str,
    plan_tier: str,
    now: datetime | None = None,
    lease: timedelta = DEFAULT_LEASE,
) -> Reservation:
    """Take one slot in every live window of the endpoint, or raise QuotaExhausted taking none."""
    now = now or datetime.now(UTC)
    static = static_limit(plan_tier, endpoint)
    blocking: list[Window] = []
    held: list[LedgerKey] = []
    async with pool.acquire() as conn, conn.transaction():
        # Creating or touching the endpoint row locks it: reservations of this bot and endpoint queue
        # here. It also records the bot's app, so `live_windows` finds the app's windows; a refusal
        # commits that too.
        row = await rate_limit_tracking.lock(
            conn, bot_id, endpoint, static.requests, now + static.window, app
        )
        if row.reset_at > now:
            limit, remaining, reset_at = row.limit_total, row.remaining, row.reset_at
        else:  # the window rolled over: full again until X says otherwise
            limit, remaining, reset_at = row.limit_total, row.limit_total, now + static.window
        in_flight = _live_reserved(row.reserved, row.reserved_until, now)
        windows = [Window("bot", endpoint, window_kind(static.window), limit, remaining, reset_at, in_flight)]
        ledger_rows = await quota_windows.lock_live(conn, bot_id, app, endpoint, now)
        windows += [_ledger_window(ledger_row, now) for ledger_row in ledger_rows]
        blocking = [window for window in windows if window.available <= 0]
        if not blocking:
            await rate_limit_tracking.hold_slot(
                conn,
                bot_id,
                endpoint,
                remaining,
                reset_at,
                in_flight + 1,
                max(now + lease, row.reserved_until or now),
            )
            for ledger_row in ledger_rows:
                live = _live_reserved(ledger_row.reserved, ledger_row.reserved_until, now)
                await quota_windows.hold_slot(
                    conn, ledger_row, live + 1, max(now + lease, ledger_row.reserved_until or now)
                )
                held.append(ledger_row.key)
    if blocking:
        raise QuotaExhausted(blocking)
    return Reservation(bot_id, app, endpoint, plan_tier, tuple(held))


def _ledger_window(row: LedgerRow, now: datetime) -> Window:
    return Window(
        scope=row.scope,
        endpoint=row.endpoint,
        window=row.window_kind,
        limit=row.limit_total,
        remaining=row.remaining,
        reset_at=row.reset_at,
        in_flight=_live_reserved(row.reserved, row.reserved_until, now),
        reason=row.reason,
        source=row.source,
    )


async def release(pool: asyncpg.Pool, reservation: Reservation, now: datetime | None = None) -> None:
    """The request was never sent: give the slots back."""
    now = now or datetime.now(UTC)
    async with pool.acquire() as conn, conn.transaction():
        await rate_limit_tracking.free_slot(conn, reservation.bot_id, reservation.endpoint, now)
        for key in sorted(reservation.ledger, key=_ledger_order):
            await quota_windows.free_slot(conn, key, reservation.endpoint, now)


async def settle(
    pool: asyncpg.Pool,
    reservation: Reservation,
    observation: Observation | None,
    now: datetime | None = None,
) -> None:
    """The request was sent: record what X said (None: no answer, counted as one request) and free
    the slots. X's numbers replace ours; two answers for the same window keep the lower count."""
    now = now or datetime.now(UTC)
    observation = observation or Observation()
    static = static_limit(reservation.plan_tier, reservation.endpoint)
    reported = observation.endpoint_window
    async with pool.acquire() as conn, conn.transaction():
        # Same lock order as `reserve`: the endpoint row, then ledger rows sorted.
        await rate_limit_tracking.settle(
            conn, reservation.bot_id, reservation.endpoint, reported, now, now + static.window
        )
        readings = {
            (r.scope, _owner(r.scope, reservation.bot_id, reservation.app), r.window): r
            for r in observation.readings
        }
        for key in sorted(set(readings) | set(reservation.ledger), key=_ledger_order):
            await _settle_ledger_window(
                conn, reservation, key, readings.get(key), key in reservation.ledger, now
            )


async def _settle_ledger_window(
    conn: asyncpg.Connection,
    reservation: Reservation,
    key: LedgerKey,
    reading: Reading | None,
    held: bool,
    now: datetime,
) -> None:
    if reading is None:  # X did not describe this window: count the request ourselves
        await quota_windows.count_request(conn, key, reservation.endpoint, now, held=held)
        return
    await quota_windows.record_reading(
        conn,
        key,
        reservation.endpoint,
        now,
        limit=reading.limit,
        remaining=reading.remaining,
        reset_at=reading.reset_at,
        reason=reading.reason,
        source=reading.source,
        bot_id=reservation.bot_id if key[0] == "bot" else None,
        held=held,
    )


# --------------------------------------------------------------------------- reading the ledger


async def live_windows(db: Db, bot_id: str, endpoint: str, plan_tier: str, now: datetime) -> list[Window]:
    """The windows binding the bot's next request to `endpoint` now (expired ones bind nothing)."""
    row = await rate_limit_tracking.find(db, bot_id, endpoint)
    windows: list[Window] = []
    if row is not None and row.reset_at > now:
        kind = _endpoint_window_kind(plan_tier, endpoint)
        in_flight = _live_reserved(row.reserved, row.reserved_until, now)
        windows.append(Window("bot", endpoint, kind, row.limit_total, row.remaining, row.reset_at, in_flight))
    rows = await quota_windows.live_of_bot(db, bot_id, endpoint, now)
    windows += [_ledger_window(ledger_row, now) for ledger_row in rows]
    return windows


def _endpoint_window_kind(plan_tier: str, endpoint: str) -> WindowKind:
    try:
        return window_kind(static_limit(plan_tier, endpoint).window)
    except ValueError:
        return "15m"


async def bot_quota(
    db: Db, bot_id: str, plan_tier: str, now: datetime | None = None, app: str | None = None
) -> list[Window]:
    """Every window the ledger knows for the bot (and for `app`), for operators. A window past its
    reset is shown full (X refills it) when its limit is known, and left out when it is not (a cap
    that ended)."""
    now = now or datetime.now(UTC)
    windows: list[Window] = []
    for row in await rate_limit_tracking.of_bot(db, bot_id):
        kind = _endpoint_window_kind(plan_tier, row.endpoint)
        in_flight = _live_reserved(row.reserved, row.reserved_until, now)
        if row.reset_at > now:
            windows.append(
                Window("bot", row.endpoint, kind, row.limit_total, row.remaining, row.reset_at, in_flight)
            )
        else:
            windows.append(Window("bot", row.endpoint, kind, row.limit_total, row.limit_total, None))
    for ledger_row in await quota_windows.of_bot(db, bot_id, app):
        if ledger_row.reset_at > now:
            windows.append(_ledger_window(ledger_row, now))
        elif ledger_row.limit_total is not None:
            windows.append(
                Window(
                    ledger_row.scope,
                    ledger_row.endpoint,
                    ledger_row.window_kind,
                    ledger_row.limit_total,
                    ledger_row.limit_total,
                    None,
                    source=ledger_row.source,
                )
            )
    windows.sort(key=lambda w: (w.scope != "bot", w.endpoint, _WINDOW_ORDER[w.window]))
    return windows
