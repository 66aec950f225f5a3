"""`pull_mentions`: store the bot's new mentions and their authors, page by page.

The cursor `bots.mentions_since_id` only moves once every page of a sweep is stored. A sweep cut
short (rate limit, crash, `max_pages`) leaves stored mentions above the cursor; the next run first
fills the gap below the oldest of them (`until_id`), then moves the cursor and sweeps for newer
ones. Rows are unique per bot and post id, so re-runs and overlapping runs never duplicate.
"""

from __future__ import annotations

from typing import Any

from activities.handlers.base import TaskContext
from activities.handlers.x_support import XHandlerBase, int_config
from xbot.repositories import bots, posts, users
from xbot.x_client import Page, XClient


class PullMentionsHandler(XHandlerBase):
    task_type = "pull_mentions"

    async def run(self, ctx: TaskContext) -> dict[str, Any]:
        max_results = int_config(ctx, "max_results", 100, 5, 100)
        max_pages = int_config(ctx, "max_pages", 20, 1, 1000)
        bot = await bots.load_bot(self.deps.pool, ctx.bot_id)
        x = self.x_client(bot)
        user_id = await self.bot_user_id(bot, x)

        pulled = 0
        pages_read = 0
        cursor = bot.mentions_since_id
        for _sweep in range(2):  # at most: finish an interrupted sweep, then a fresh one
            gap_top = await posts.lowest_mention_above(self.deps.pool, bot.id, cursor)
            complete, new, pages = await self._sweep(
                x, bot.id, user_id, cursor, gap_top, max_results, max_pages - pages_read
            )
            pulled += new
            pages_read += pages
            if not complete:
                await self.log(
                    ctx,
                    "warn",
                    f"stopped after {pages_read} pages of mentions (max_pages); continuing next run",
                )
                break
            newest = await posts.newest_mention_id(self.deps.pool, bot.id)
            if newest is not None:
                await bots.advance_mentions_cursor(self.deps.pool, bot.id, newest)
                cursor = newest
            if gap_top is None or pages_read >= max_pages:
                break
        if pulled:
            await self.log(ctx, "info", f"pulled {pulled} new mentions", {"mentions_pulled": pulled})
        return {"mentions_pulled": pulled}

    async def _sweep(
        self,
        x: XClient,
        bot_id: str,
        user_id: str,
        since_id: str | None,
        until_id: str | None,
        max_results: int,
        page_budget: int,
    ) -> tuple[bool, int, int]:
        """(every page read, new mentions, pages read) for mentions in (since_id, until_id)."""
        token: str | None = None
        new = 0
        for page_number in range(1, page_budget + 1):
            page = await x.mentions(
                user_id, since_id=since_id, until_id=until_id, pagination_token=token, max_results=max_results
            )
            new += await self._store(bot_id, page)
            token = page.next_token
            if token is None:
                return True, new, page_number
        return False, new, page_budget

    async def _store(self, bot_id: str, page: Page) -> int:
        async with self.deps.pool.acquire() as conn, conn.transaction():
            await users.upsert_users(conn, page.users, full_profile=False)
            # Mentions first: a post both in `data` and in the expansions must count as a new mention.
            new = await posts.store_posts(conn, bot_id, page.posts, "mention")
            await posts.store_posts(conn, bot_id, page.included_posts, "context")
            return new
