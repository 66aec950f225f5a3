"""The thread above each mention, for generate_replies' prompts: stored parents first, the rest
looked up on X for the whole batch at once, level by level (`GET /2/tweets?ids=`, up to 100 a
request). A parent X cannot return (deleted, author suspended, protected) ends that mention's walk
with the reason (`Thread.gap`); it never fails the task."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from xbot.llm.client import ContextPost
from xbot.storage import posts, users
from xbot.storage.posts import StoredPost
from xbot.x.client import MAX_IDS_PER_LOOKUP, XClient
from xbot.x.errors import XForbiddenError, XNotFoundError
from xbot.x.responses import missing_posts


@dataclass
class Thread:
    """The posts above one mention, nearest first, and why the walk up stopped early, if it did."""

    next_id: str | None
    parents: list[StoredPost] = field(default_factory=list)
    gap: tuple[str, str] | None = None  # (post id, reason) of the first parent X could not return


async def context(pool: asyncpg.Pool, thread: Thread) -> list[ContextPost]:
    """The thread for the prompt, oldest first."""
    chain: list[ContextPost] = []
    for parent in reversed(thread.parents):
        author = await users.find_user(pool, parent.author_x_user_id)
        chain.append(ContextPost(author.username if author else "unknown", parent.text))
    return chain


async def walk(
    pool: asyncpg.Pool, bot_id: str, x: XClient, mentions: list[StoredPost], depth: int
) -> dict[int, Thread]:
    """Up to `depth` parents of every mention, one level at a time: each level is one database
    read and, for the parents not stored yet, one X lookup per 100 (whose expansions often bring
    the next level along)."""
    threads = {mention.id: Thread(mention.in_reply_to_post_id) for mention in mentions}
    unavailable: dict[str, str] = {}  # post id -> why X did not return it
    for _level in range(depth):
        wanted = sorted({t.next_id for t in threads.values() if t.next_id})
        if not wanted:
            break
        found = await posts.find_posts(pool, bot_id, wanted)
        missing = [post_id for post_id in wanted if post_id not in found and post_id not in unavailable]
        if missing:
            unavailable.update(await _look_up(pool, bot_id, x, missing))
            found.update(await posts.find_posts(pool, bot_id, missing))
        for thread in threads.values():
            if thread.next_id is None:
                continue
            parent = found.get(thread.next_id)
            if parent is None:
                thread.gap = (thread.next_id, unavailable.get(thread.next_id, "not returned by X"))
                thread.next_id = None
            else:
                thread.parents.append(parent)
                thread.next_id = parent.in_reply_to_post_id
    return threads


async def _look_up(pool: asyncpg.Pool, bot_id: str, x: XClient, post_ids: list[str]) -> dict[str, str]:
    """Store the posts X returns (and their authors and referenced posts) as context; returns
    {post id: reason} for the ones it cannot return."""
    reasons: dict[str, str] = {}
    for start in range(0, len(post_ids), MAX_IDS_PER_LOOKUP):
        chunk = post_ids[start : start + MAX_IDS_PER_LOOKUP]
        try:
            page = await x.get_posts(chunk)
        except (XNotFoundError, XForbiddenError) as error:  # refused as a whole: no context
            reasons.update(dict.fromkeys(chunk, str(error)))
            continue
        async with pool.acquire() as conn, conn.transaction():
            await users.upsert_users(conn, page.users, full_profile=False)
            await posts.store_posts(conn, bot_id, page.posts, "context")
            await posts.store_posts(conn, bot_id, page.included_posts, "context")
        reasons.update(missing_posts(page, chunk))
    return reasons
