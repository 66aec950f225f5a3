"""Posts pulled from X for a bot: mentions, thread context, and the bot's own posts.

Post ids are decimal strings of up to 19 digits; they are compared as numbers (`::numeric`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel

from xbot.storage.pages import Where, newest_first

PostKind = Literal["mention", "context", "own"]


@dataclass(frozen=True)
class StoredPost:
    id: int
    bot_id: str
    x_post_id: str
    author_x_user_id: str | None
    conversation_id: str | None
    in_reply_to_post_id: str | None
    kind: str
    text: str
    posted_at: datetime | None
    media: list[dict[str, Any]] | None = None  # see `attached_media`
    image_description: str | None = None  # the vision model's, stored once
    vision_error: str | None = None  # why the images could not be described


_POST_COLUMNS = (
    "id, bot_id, x_post_id, author_x_user_id, conversation_id, in_reply_to_post_id, kind, text, posted_at,"
    " media, image_description, vision_error"
)
MEDIA_KEYS = ("media_key", "type", "url", "preview_image_url", "alt_text")


def attached_media(post: dict[str, Any], media: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The post's media (`attachments.media_keys` found in the page's `includes.media`), with only
    the fields kept; None when it has none."""
    attachments = post.get("attachments")
    keys = attachments.get("media_keys") if isinstance(attachments, dict) else None
    if not isinstance(keys, list):
        return None
    found = [media[key] for key in keys if isinstance(key, str) and key in media]
    kept = [{name: item[name] for name in MEDIA_KEYS if isinstance(item.get(name), str)} for item in found]
    return kept or None


def media_by_key(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["media_key"]: item for item in items if isinstance(item.get("media_key"), str)}


def replied_to_id(post: dict[str, Any]) -> str | None:
    """The id of the post this one replies to, from X's `referenced_tweets`."""
    for reference in post.get("referenced_tweets") or []:
        if isinstance(reference, dict) and reference.get("type") == "replied_to":
            ref_id = reference.get("id")
            return ref_id if isinstance(ref_id, str) else None
    return None


# X's post ids are snowflakes: milliseconds since this epoch, shifted left by 22 bits.
_SNOWFLAKE_EPOCH_MS = 1288834974657


def posted_at(post: dict[str, Any]) -> datetime | None:
    """When the post was made: X's `created_at`, else the time inside its snowflake id."""
    created = _created_at(post)
    if created is not None:
        return created
    post_id = post.get("id")
    if not isinstance(post_id, str) or not post_id.isdigit():
        return None
    return datetime.fromtimestamp(((int(post_id) >> 22) + _SNOWFLAKE_EPOCH_MS) / 1000, UTC)


def _created_at(post: dict[str, Any]) -> datetime | None:
    value = post.get("created_at")
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


async def store_posts(
    conn: asyncpg.Connection,
    bot_id: str,
    posts: list[dict[str, Any]],
    kind: PostKind,
    skipped_reason: str | None = None,
    media: Mapping[str, dict[str, Any]] | None = None,
) -> int:
    """Insert posts not stored yet; returns how many were new. A context post that turns out to be
    a mention becomes a mention; nothing is ever downgraded. Mentions stored with a
    `skipped_reason` (the backlog policy's) are kept for the record and never answered. `media`:
    the page's `includes.media` by key; each post keeps its own (`attached_media`)."""
    inserted = 0
    for post in posts:
        was_new = await conn.fetchval(
            """
            INSERT INTO pulled_posts (bot_id, x_post_id, author_x_user_id, conversation_id,
                                      in_reply_to_post_id, kind, text, posted_at, raw, skipped_reason, media)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            ON CONFLICT (bot_id, x_post_id) DO UPDATE SET kind = 'mention', skipped_reason = EXCLUDED.skipped_reason,
                media = coalesce(EXCLUDED.media, pulled_posts.media)
            WHERE EXCLUDED.kind = 'mention' AND pulled_posts.kind <> 'mention'
            RETURNING (xmax = 0)
            """,
            bot_id,
            post["id"],
            post.get("author_id"),
            post.get("conversation_id"),
            replied_to_id(post),
            kind,
            post.get("text") or "",
            _created_at(post),
            post,
            skipped_reason,
            attached_media(post, media or {}),
        )
        inserted += bool(was_new)
    return inserted


async def lowest_mention_above(
    db: asyncpg.Pool | asyncpg.Connection, bot_id: str, since_id: str | None
) -> str | None:
    """Oldest stored mention newer than the cursor: where an unfinished sweep stopped."""
    value: str | None = await db.fetchval(
        "SELECT x_post_id FROM pulled_posts WHERE bot_id = $1 AND kind = 'mention'"
        " AND ($2::text IS NULL OR x_post_id::numeric > $2::numeric)"
        " ORDER BY x_post_id::numeric LIMIT 1",
        bot_id,
        since_id,
    )
    return value


async def newest_mention_id(db: asyncpg.Pool | asyncpg.Connection, bot_id: str) -> str | None:
    value: str | None = await db.fetchval(
        "SELECT x_post_id FROM pulled_posts WHERE bot_id = $1 AND kind = 'mention'"
        " ORDER BY x_post_id::numeric DESC LIMIT 1",
        bot_id,
    )
    return value


async def find_post(db: asyncpg.Pool | asyncpg.Connection, bot_id: str, x_post_id: str) -> StoredPost | None:
    row = await db.fetchrow(
        f"SELECT {_POST_COLUMNS} FROM pulled_posts WHERE bot_id = $1 AND x_post_id = $2", bot_id, x_post_id
    )
    return StoredPost(**dict(row)) if row else None


async def find_posts(
    db: asyncpg.Pool | asyncpg.Connection, bot_id: str, x_post_ids: list[str]
) -> dict[str, StoredPost]:
    """The stored ones among these posts, by X post id."""
    rows = await db.fetch(
        f"SELECT {_POST_COLUMNS} FROM pulled_posts WHERE bot_id = $1 AND x_post_id = ANY($2::text[])",
        bot_id,
        x_post_ids,
    )
    return {row["x_post_id"]: StoredPost(**dict(row)) for row in rows}


async def mentions_needing_reply(
    db: asyncpg.Pool | asyncpg.Connection, bot_id: str, bot_x_user_id: str | None, limit: int
) -> list[StoredPost]:
    """Oldest first: mentions with no reply row, not by the bot itself, not by a banned author, not
    skipped by the backlog policy."""
    rows = await db.fetch(
        f"""
        SELECT {_POST_COLUMNS} FROM pulled_posts p
        WHERE p.bot_id = $1 AND p.kind = 'mention'
          AND p.author_x_user_id IS DISTINCT FROM $2
          AND p.skipped_reason IS NULL
          AND NOT EXISTS (SELECT 1 FROM post_replies r WHERE r.bot_id = $1 AND r.pulled_post_id = p.id)
          AND NOT EXISTS (SELECT 1 FROM bot_banned_users b
                          WHERE b.bot_id = $1 AND b.x_user_id = p.author_x_user_id)
        ORDER BY p.x_post_id::numeric
        LIMIT $3
        """,
        bot_id,
        bot_x_user_id,
        limit,
    )
    return [StoredPost(**dict(row)) for row in rows]


async def record_description(
    db: asyncpg.Pool | asyncpg.Connection,
    post_id: int,
    description: str | None,
    model: str | None,
    error: str | None,
) -> None:
    """What the vision model said about the post's images, or why it could not: stored once, so a
    retried task does not pay for it again."""
    await db.execute(
        "UPDATE pulled_posts SET image_description = $2, image_description_model = $3, vision_error = $4,"
        " described_at = now() WHERE id = $1",
        post_id,
        description,
        model,
        error[:500] if error else None,
    )


@dataclass(frozen=True)
class AuthorFacts:
    """What the reply policy reads about a mention beyond the post: its language and its author."""

    lang: str | None
    followers_count: int | None
    author_created_at: str | None  # X's `created_at` of the author, as X wrote it


async def author_facts(db: asyncpg.Pool | asyncpg.Connection, post_id: int) -> AuthorFacts | None:
    row = await db.fetchrow(
        """
        SELECT p.raw->>'lang' AS lang, u.followers_count, u.raw->>'created_at' AS author_created_at
        FROM pulled_posts p LEFT JOIN x_users u ON u.x_user_id = p.author_x_user_id
        WHERE p.id = $1
        """,
        post_id,
    )
    return AuthorFacts(**dict(row)) if row is not None else None


# A mention the bot will not answer, and why; the API answers with it as is.
class SkippedMention(BaseModel):
    id: int
    x_post_id: str
    author_x_user_id: str | None
    author_username: str | None
    text: str
    posted_at: datetime | None
    skipped_code: str
    skipped_reason: str
    pulled_at: datetime


async def skipped_mentions(
    db: asyncpg.Pool | asyncpg.Connection,
    bot_id: str,
    *,
    code: str | None,
    before: tuple[datetime, int] | None,
    limit: int,
) -> list[SkippedMention]:
    """Newest first; `code`: the reply policy's rule, or `backlog` (too old for pull_mentions);
    `before`: the (pulled_at, id) the previous page ended with."""
    where = Where("p.bot_id = $1", "p.kind = 'mention'", "p.skipped_reason IS NOT NULL", args=(bot_id,))
    where.equal("coalesce(p.skipped_code, 'backlog')", code)
    rows = await newest_first(
        db,
        """
        SELECT p.id, p.x_post_id, p.author_x_user_id, u.username AS author_username, p.text, p.posted_at,
               coalesce(p.skipped_code, 'backlog') AS skipped_code, p.skipped_reason, p.pulled_at
        FROM pulled_posts p LEFT JOIN x_users u ON u.x_user_id = p.author_x_user_id
        """,
        where,
        order=("p.pulled_at", "p.id"),
        before=before,
        limit=limit,
    )
    return [SkippedMention.model_validate(dict(row)) for row in rows]


async def record_skip(
    db: asyncpg.Pool | asyncpg.Connection, pulled_post_id: int, reason: str, code: str
) -> None:
    """The reply policy will not answer the mention; why is kept on it (listed by the API, counted
    in /metrics). The first reason stays."""
    await db.execute(
        "UPDATE pulled_posts SET skipped_reason = $2, skipped_code = $3 WHERE id = $1 AND skipped_reason IS NULL",
        pulled_post_id,
        reason[:500],
        code,
    )


async def skipped_counts(db: asyncpg.Pool | asyncpg.Connection) -> list[tuple[str, str, int]]:
    """(bot id, skipped code or `backlog`, mentions) for every bot (for /metrics)."""
    rows = await db.fetch(
        "SELECT bot_id, coalesce(skipped_code, 'backlog') AS reason, count(*) AS n FROM pulled_posts"
        " WHERE kind = 'mention' AND skipped_reason IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2"
    )
    return [(row["bot_id"], row["reason"], row["n"]) for row in rows]
