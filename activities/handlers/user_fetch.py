"""`user_fetch`: refresh profiles of the bot's post authors never fetched or older than
`config.max_age_hours` (default 24), up to `config.max_users` per run, 100 ids per X request."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from activities.handlers.base import TaskContext
from activities.handlers.x_support import XHandlerBase, float_config, int_config
from xbot.storage import bots, users
from xbot.x.client import MAX_IDS_PER_LOOKUP


class UserFetchHandler(XHandlerBase):
    task_type = "user_fetch"

    async def run(self, ctx: TaskContext) -> dict[str, Any]:
        max_age = timedelta(hours=float_config(ctx, "max_age_hours", 24.0, 0.0, 24.0 * 365))
        max_users = int_config(ctx, "max_users", 500, 1, 10_000)
        bot = await bots.load_bot(self.deps.pool, ctx.bot_id)
        stale = await users.stale_author_ids(self.deps.pool, bot.id, max_age, max_users)
        if not stale:
            return {"users_checked": 0, "users_refreshed": 0}
        x = self.x_client(bot, ctx.task_type)
        checked = refreshed = 0
        for start in range(0, len(stale), MAX_IDS_PER_LOOKUP):
            batch = stale[start : start + MAX_IDS_PER_LOOKUP]
            page = await x.users_by_ids(batch)
            async with self.deps.pool.acquire() as conn, conn.transaction():
                refreshed += await users.upsert_users(conn, page.users, full_profile=True)
                returned = {user.get("id") for user in page.users}
                await users.mark_checked(conn, [user_id for user_id in batch if user_id not in returned])
            checked += len(batch)
        return {"users_checked": checked, "users_refreshed": refreshed}
