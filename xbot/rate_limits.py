"""X API rate limits per bot and endpoint: static plan limits, then what X's headers say.

X sends `x-rate-limit-limit`, `x-rate-limit-remaining` and `x-rate-limit-reset` (epoch seconds).
Until a bot has seen a response for an endpoint, the published per-user limits of its plan apply.
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
    """Requests left in the current window; `reset_at` is None when no window is being tracked."""

    endpoint: str
    limit: int
    remaining: int
    reset_at: datetime | None

    def allows(self, minimum_remaining: int) -> bool:
        return self.remaining > 0 and self.remaining >= minimum_remaining


async def headroom(
    pool: asyncpg.Pool | asyncpg.Connection,
    bot_id: str,
    endpoint: str,
    plan_tier: str,
    now: datetime | None = None,
) -> Headroom:
    now = now or datetime.now(UTC)
    row = await pool.fetchrow(
        "SELECT limit_total, remaining, reset_at FROM rate_limit_tracking"
        " WHERE bot_id = $1 AND endpoint = $2",
        bot_id,
        endpoint,
    )
    if row is not None and row["reset_at"] > now:
        return Headroom(endpoint, row["limit_total"], row["remaining"], row["reset_at"])
    limit = static_limit(plan_tier, endpoint)
    return Headroom(endpoint, limit.requests, limit.requests, None)


def parse_rate_limit_headers(headers: Mapping[str, str]) -> tuple[int, int, datetime] | None:
    """(limit, remaining, reset_at) from X's headers, or None when they are absent or garbled."""
    try:
        limit = int(headers["x-rate-limit-limit"])
        remaining = int(headers["x-rate-limit-remaining"])
        reset_at = datetime.fromtimestamp(int(headers["x-rate-limit-reset"]), UTC)
    except (KeyError, ValueError, OverflowError):
        return None
    return max(limit, 0), max(remaining, 0), reset_at


async def record_window(
    pool: asyncpg.Pool | asyncpg.Connection,
    bot_id: str,
    endpoint: str,
    limit: int,
    remaining: int,
    reset_at: datetime,
) -> None:
    await pool.execute(
        """
        INSERT INTO rate_limit_tracking (bot_id, endpoint, limit_total, remaining, reset_at, updated_at)
        VALUES ($1, $2, $3, $4, $5, now())
        ON CONFLICT (bot_id, endpoint) DO UPDATE
        SET limit_total = EXCLUDED.limit_total, remaining = EXCLUDED.remaining,
            reset_at = EXCLUDED.reset_at, updated_at = now()
        """,
        bot_id,
        endpoint,
        limit,
        remaining,
        reset_at,
    )


async def consume_static(
    pool: asyncpg.Pool | asyncpg.Connection,
    bot_id: str,
    endpoint: str,
    plan_tier: str,
    now: datetime | None = None,
) -> None:
    """Count one request against the plan's static window when X sent no headers."""
    now = now or datetime.now(UTC)
    limit = static_limit(plan_tier, endpoint)
    await pool.execute(
        """
        INSERT INTO rate_limit_tracking (bot_id, endpoint, limit_total, remaining, reset_at, updated_at)
        VALUES ($1, $2, $3, $3 - 1, $4, now())
        ON CONFLICT (bot_id, endpoint) DO UPDATE
        SET remaining = CASE WHEN rate_limit_tracking.reset_at > $5
                             THEN greatest(rate_limit_tracking.remaining - 1, 0) ELSE $3 - 1 END,
            limit_total = CASE WHEN rate_limit_tracking.reset_at > $5
                               THEN rate_limit_tracking.limit_total ELSE $3 END,
            reset_at = CASE WHEN rate_limit_tracking.reset_at > $5
                            THEN rate_limit_tracking.reset_at ELSE $4 END,
            updated_at = now()
        """,
        bot_id,
        endpoint,
        limit.requests,
        now + limit.window,
        now,
    )
