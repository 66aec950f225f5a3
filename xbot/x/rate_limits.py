"""X API rate limits per bot and endpoint: static plan limits, then what X's headers say.

X sends `x-rate-limit-limit`, `x-rate-limit-remaining` and `x-rate-limit-reset` (epoch seconds).
Until a bot has seen a response for an endpoint, the published per-user limits of its plan apply.
The windows themselves (and X's 24-hour, app-wide and usage-capped ones) are kept by the quota
ledger, `xbot.x.quota`; `headroom` reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

FIFTEEN_MINUTES = timedelta(minutes=15)
ONE_DAY = timedelta(hours=24)


@dataclass(frozen=True)
class StaticLimit:
    requests: int
    window: timedelta


# Endpoint keys used by task definitions (`rate_limit_endpoint`) and by the X client.
ENDPOINTS: dict[str, str] = {
    "users_me": "GET /2/users/me",
    "mentions": "GET /2/users/{id}/mentions",
    "user_tweets": "GET /2/users/{id}/tweets",
    "tweet_lookup": "GET /2/tweets/{id}",
    "users_lookup": "GET /2/users",
    "create_post": "POST /2/tweets",
}

# Published per-user limits by plan (the tightest of the plan's windows).
PLAN_LIMITS: dict[str, dict[str, StaticLimit]] = {
    "free": {
        "users_me": StaticLimit(25, ONE_DAY),
        "mentions": StaticLimit(1, FIFTEEN_MINUTES),
        "user_tweets": StaticLimit(1, FIFTEEN_MINUTES),
        "tweet_lookup": StaticLimit(1, FIFTEEN_MINUTES),
        "users_lookup": StaticLimit(1, ONE_DAY),
        "create_post": StaticLimit(17, ONE_DAY),
    },
    "basic": {
        "users_me": StaticLimit(250, ONE_DAY),
        "mentions": StaticLimit(10, FIFTEEN_MINUTES),
        "user_tweets": StaticLimit(5, FIFTEEN_MINUTES),
        "tweet_lookup": StaticLimit(15, FIFTEEN_MINUTES),
        "users_lookup": StaticLimit(100, ONE_DAY),
        "create_post": StaticLimit(100, ONE_DAY),
    },
    "pro": {
        "users_me": StaticLimit(75, FIFTEEN_MINUTES),
        "mentions": StaticLimit(300, FIFTEEN_MINUTES),
        "user_tweets": StaticLimit(900, FIFTEEN_MINUTES),
        "tweet_lookup": StaticLimit(900, FIFTEEN_MINUTES),
        "users_lookup": StaticLimit(900, FIFTEEN_MINUTES),
        "create_post": StaticLimit(100, FIFTEEN_MINUTES),
    },
}
PLAN_LIMITS["enterprise"] = PLAN_LIMITS["pro"]


def static_limit(plan_tier: str, endpoint: str) -> StaticLimit:
    try:
        return PLAN_LIMITS[plan_tier][endpoint]
    except KeyError:
        raise ValueError(f"unknown plan tier or rate-limit endpoint: {plan_tier}/{endpoint}") from None


@dataclass(frozen=True)
class Headroom:
    """Requests left in the tightest window binding the endpoint now; `reset_at` is None when no
    window is being tracked (the plan's static limit applies). `scope` and `window` say which
    window it is (see `xbot.x.quota`)."""

    endpoint: str
    limit: int
    remaining: int
    reset_at: datetime | None
    scope: str = "bot"
    window: str = ""

    def allows(self, minimum_remaining: int) -> bool:
        return self.remaining > 0 and self.remaining >= minimum_remaining


async def headroom(
    pool: asyncpg.Pool | asyncpg.Connection,
    bot_id: str,
    endpoint: str,
    plan_tier: str,
    now: datetime | None = None,
) -> Headroom:
    """The window with the fewest free slots among the bot's endpoint window, its 24-hour window, the
    app's windows and usage caps (in-flight reservations count as spent); ties go to the later reset,
    so a task postponed by it does not wake into another spent window."""
    # Imported here: the ledger builds on this module's plan limits and header parsing.
    from xbot.x import quota

    now = now or datetime.now(UTC)
    windows = await quota.live_windows(pool, bot_id, endpoint, plan_tier, now)
    if windows:
        tightest = min(windows, key=lambda w: (w.available, -(w.reset_at or now).timestamp()))
        limit = tightest.limit if tightest.limit is not None else 0
        return Headroom(
            endpoint, limit, tightest.available, tightest.reset_at, tightest.scope, tightest.window
        )
    static = static_limit(plan_tier, endpoint)
    window = "15m" if static.window <= FIFTEEN_MINUTES else "24h"
    return Headroom(endpoint, static.requests, static.requests, None, "bot", window)


def parse_rate_limit_headers(headers: Mapping[str, str]) -> tuple[int, int, datetime] | None:
    """(limit, remaining, reset_at) from X's headers, or None when they are absent or garbled."""
    try:
        limit = int(headers["x-rate-limit-limit"])
        remaining = int(headers["x-rate-limit-remaining"])
        reset_at = datetime.fromtimestamp(int(headers["x-rate-limit-reset"]), UTC)
    except (KeyError, ValueError, OverflowError):
        return None
    return max(limit, 0), max(remaining, 0), reset_at
