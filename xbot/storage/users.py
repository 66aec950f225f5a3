"""X user profiles. Expansions from timelines store what they carry; `user_fetch` stores full
profiles and stamps `fetched_at`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg


@dataclass(frozen=True)
class XUser:
    x_user_id: str
    username: str
    name: str | None
    description: str | None


def _metric(user: dict[str, Any], name: str) -> int | None:
    metrics = user.get("public_metrics")
    value = metrics.get(name) if isinstance(metrics, dict) else None
    return value if isinstance(value, int) else None


async def upsert_users(
    db: asyncpg.Pool | asyncpg.Connection, users: Iterable[dict[str, Any]], *, full_profile: bool
) -> int:
    """Insert or update users X returned; returns how many rows were written."""
    written = 0
    for user in users:
        if not isinstance(user.get("id"), str) or not isinstance(user.get("username"), str):
            continue
        await db.execute(
            """
            INSERT INTO x_users (x_user_id, username, name, description, profile_image_url, verified,
                                 protected, followers_count, following_count, tweet_count, raw,
                                 fetched_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, CASE WHEN $12 THEN now() END)
            ON CONFLICT (x_user_id) DO UPDATE SET
                username = EXCLUDED.username,
                name = coalesce(EXCLUDED.name, x_users.name),
                description = coalesce(EXCLUDED.description, x_users.description),
                profile_image_url = coalesce(EXCLUDED.profile_image_url, x_users.profile_image_url),
                verified = coalesce(EXCLUDED.verified, x_users.verified),
                protected = coalesce(EXCLUDED.protected, x_users.protected),
                followers_count = coalesce(EXCLUDED.followers_count, x_users.followers_count),
                following_count = coalesce(EXCLUDED.following_count, x_users.following_count),
                tweet_count = coalesce(EXCLUDED.tweet_count, x_users.tweet_count),
                raw = CASE WHEN $12 THEN EXCLUDED.raw ELSE coalesce(x_users.raw, EXCLUDED.raw) END,
                fetched_at = CASE WHEN $12 THEN now() ELSE x_users.fetched_at END,
                updated_at = now()
            """,
            user["id"],
            user["username"],
            user.get("name"),
            user.get("description"),
            user.get("profile_image_url"),
            user.get("verified"),
            user.get("protected"),
            _metric(user, "followers_count"),
            _metric(user, "following_count"),
            _metric(user, "tweet_count"),
            user,
            full_profile,
        )
        written += 1
    return written


async def mark_checked(db: asyncpg.Pool | asyncpg.Connection, user_ids: list[str]) -> None:
    """Users X could not return (suspended, deleted): checked now, so they are not asked for again soon."""
    if user_ids:
        await db.execute(
            "UPDATE x_users SET fetched_at = now(), updated_at = now() WHERE x_user_id = ANY($1::text[])",
            user_ids,
        )


async def stale_author_ids(
    db: asyncpg.Pool | asyncpg.Connection, bot_id: str, max_age: timedelta, limit: int
) -> list[str]:
    """Authors of the bot's posts never fully fetched or fetched longer than `max_age` ago."""
    rows = await db.fetch(
        """
        SELECT a.author_x_user_id AS id
        FROM (SELECT DISTINCT author_x_user_id FROM pulled_posts
              WHERE bot_id = $1 AND author_x_user_id IS NOT NULL) a
        LEFT JOIN x_users u ON u.x_user_id = a.author_x_user_id
        WHERE u.fetched_at IS NULL OR u.fetched_at < now() - $2::interval
        ORDER BY u.fetched_at NULLS FIRST, a.author_x_user_id
        LIMIT $3
        """,
        bot_id,
        max_age,
        limit,
    )
    return [row["id"] for row in rows]


async def find_user(db: asyncpg.Pool | asyncpg.Connection, x_user_id: str | None) -> XUser | None:
    if x_user_id is None:
        return None
    row = await db.fetchrow(
        "SELECT x_user_id, username, name, description FROM x_users WHERE x_user_id = $1", x_user_id
    )
    return XUser(**dict(row)) if row else None
