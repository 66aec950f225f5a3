"""`pull_mentions`: store the bot's new mentions and their authors, page by page, under a backlog policy.

The cursor `bots.mentions_since_id` only moves once a sweep is complete. A sweep cut short (rate
limit, the window's reserve, `max_pages`, a crash) leaves stored mentions above the cursor: the lowest
of them is the stored pagination position. The next run first fills the gap below it (`until_id`),
then moves the cursor and sweeps for newer ones. Rows are unique per bot and post id, so re-runs and
overlapping runs never duplicate.

Backlog policy (task `config`):
- A new bot (no cursor, no mention stored) starts from now: it reads only the newest page, unless
  `backfill: true` (every page, up to `max_pages`) or `backfill_hours: N` (pages back to N hours ago).
- Mentions older than `max_mention_age_hours` (default 24) are stored with a `skipped_reason` and
  never answered; a sweep ends at the first of them, since every later page is older still. So a bot
  paused for months resumes with today's mentions, not with a backlog of stale ones.
- With a reserve (`rate_limit_reserve`, or the definition's `min_rate_limit_remaining` when its
  `rate_limit_endpoint` is `mentions`), a page after the first is read only while the mentions
  windows keep more than the reserve. Stopping there is a success; the next run resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from activities.handlers.base import TaskContext
from activities.handlers.x_support import XHandlerBase, float_config, int_config
from xbot.errors import NonRetryableTaskError
from xbot.storage import bots, posts, users
from xbot.storage import task_definitions as definitions_table
from xbot.storage.bots import BotProfile
from xbot.x import rate_limits
from xbot.x.client import XClient
from xbot.x.responses import Page

MENTIONS = "mentions"
HOURS_IN_TEN_YEARS = 24 * 366 * 10


@dataclass(frozen=True)
class BacklogPolicy:
    max_results: int
    max_pages: int
    max_age: timedelta
    backfill: bool
    backfill_hours: float | None
    reserve: int


@dataclass(frozen=True)
class Horizon:
    """Mentions posted before `oldest` are skipped, for `reason`."""

    oldest: datetime
    reason: str


@dataclass
class Tally:
    pulled: int = 0
    skipped: int = 0
    pages: int = 0
    more_left: bool = False  # a newest-only run left older pages unread


class PullMentionsHandler(XHandlerBase):
    task_type = "pull_mentions"

    async def run(self, ctx: TaskContext) -> dict[str, Any]:
        policy = await self._policy(ctx)
        bot = await bots.load_bot(self.deps.pool, ctx.bot_id)
        x = self.x_client(bot, ctx.task_type)
        user_id = await self.bot_user_id(bot, x)
        now = datetime.now(UTC)
        hours = policy.max_age.total_seconds() / 3600
        horizon = Horizon(now - policy.max_age, f"older than max_mention_age_hours ({hours:g} h) when pulled")
        page_budget = policy.max_pages
        newest_only = False
        if bot.mentions_since_id is None and await posts.newest_mention_id(self.deps.pool, bot.id) is None:
            if policy.backfill_hours is not None:
                backfill_start = now - timedelta(hours=policy.backfill_hours)
                if backfill_start > horizon.oldest:
                    reason = f"before the new bot's backfill_hours ({policy.backfill_hours:g} h)"
                    horizon = Horizon(backfill_start, reason)
            elif not policy.backfill:
                page_budget, newest_only = 1, True

        sweeper = _Sweeper(self, x, bot, user_id, policy, horizon, newest_only)
        cursor = bot.mentions_since_id
        stopped: str | None = None
        for _sweep in range(2):  # at most: finish an interrupted sweep, then a fresh one
            gap_top = await posts.lowest_mention_above(self.deps.pool, bot.id, cursor)
            stopped = await sweeper.sweep(cursor, gap_top, page_budget - sweeper.tally.pages)
            if stopped is not None:
                break
            newest = await posts.newest_mention_id(self.deps.pool, bot.id)
            if newest is not None:
                await bots.advance_mentions_cursor(self.deps.pool, bot.id, newest)
                cursor = newest
            if gap_top is None or sweeper.tally.pages >= page_budget:
                break
        return await self._report(ctx, sweeper.tally, horizon, stopped)

    async def _policy(self, ctx: TaskContext) -> BacklogPolicy:
        backfill = ctx.config.get("backfill", False)
        if not isinstance(backfill, bool):
            raise NonRetryableTaskError(f"task config `backfill` must be true or false, got {backfill!r}")
        backfill_hours = (
            float_config(ctx, "backfill_hours", 0, 0, HOURS_IN_TEN_YEARS)
            if ctx.config.get("backfill_hours") is not None
            else None
        )
        guard = await definitions_table.rate_limit_guard(self.deps.pool, ctx.bot_id, ctx.task_id)
        definition_reserve = (
            guard.min_rate_limit_remaining
            if guard is not None and guard.rate_limit_endpoint == MENTIONS
            else 0
        )
        return BacklogPolicy(
            max_results=int_config(ctx, "max_results", 100, 5, 100),
            max_pages=int_config(ctx, "max_pages", 20, 1, 1000),
            max_age=timedelta(hours=float_config(ctx, "max_mention_age_hours", 24, 0.01, HOURS_IN_TEN_YEARS)),
            backfill=backfill,
            backfill_hours=backfill_hours,
            reserve=max(int_config(ctx, "rate_limit_reserve", 0, 0, 1_000_000), definition_reserve),
        )

    async def _report(
        self, ctx: TaskContext, tally: Tally, horizon: Horizon, stopped: str | None
    ) -> dict[str, Any]:
        result: dict[str, Any] = {"mentions_pulled": tally.pulled}
        if tally.pulled:
            await self.log(
                ctx, "info", f"pulled {tally.pulled} new mentions", {"mentions_pulled": tally.pulled}
            )
        if tally.skipped:
            result |= {"mentions_skipped": tally.skipped, "skipped_reason": horizon.reason}
            await self.log(
                ctx,
                "info",
                f"skipped {tally.skipped} mentions {horizon.reason}; they will not be answered",
                {"mentions_skipped": tally.skipped},
            )
        if tally.more_left:
            result["backlog"] = (
                "new bot: started from the newest page; set config backfill or backfill_hours to read older mentions"
            )
        if stopped is not None:
            result["stopped"] = stopped
            await self.log(ctx, "warn" if "max_pages" in stopped else "info", stopped)
        return result


class _Sweeper:
    """Reads pages of mentions newest first, storing them, until the end, the horizon or a limit."""

    def __init__(
        self,
        handler: PullMentionsHandler,
        x: XClient,
        bot: BotProfile,
        user_id: str,
        policy: BacklogPolicy,
        horizon: Horizon,
        newest_only: bool,
    ) -> None:
        self.handler = handler
        self.pool = handler.deps.pool
        self.x = x
        self.bot = bot
        self.user_id = user_id
        self.policy = policy
        self.horizon = horizon
        self.newest_only = newest_only
        self.tally = Tally()

    async def sweep(self, since_id: str | None, until_id: str | None, page_budget: int) -> str | None:
        """Mentions in (since_id, until_id): None when the sweep is complete, else why it stopped."""
        token: str | None = None
        for _ in range(page_budget):
            if self.tally.pages > 0:
                kept = await self._reserve_kept()
                if kept is not None:
                    return kept
            page = await self.x.mentions(
                self.user_id,
                since_id=since_id,
                until_id=until_id,
                pagination_token=token,
                max_results=self.policy.max_results,
            )
            self.tally.pages += 1
            reached_horizon = await self._store(page)
            token = page.next_token
            if token is None or reached_horizon:
                return None
        if self.newest_only:  # a new bot starts from now: older pages are left unread on purpose
            self.tally.more_left = True
            return None
        return f"stopped after {self.tally.pages} pages of mentions (max_pages); continuing next run"

    async def _reserve_kept(self) -> str | None:
        """Why not to read another page: the windows would fall below the task's reserve."""
        reserve = self.policy.reserve
        if reserve <= 0:  # nothing to keep: a spent window postpones the task until it resets
            return None
        room = await rate_limits.headroom(self.pool, self.bot.id, MENTIONS, self.bot.plan_tier)
        if room.allows(reserve + 1):
            return None
        until = f" until {room.reset_at.isoformat()}" if room.reset_at else ""
        return (
            f"kept the reserve of {reserve} {MENTIONS} requests ({room.remaining} left in the "
            f"{room.scope} {room.window} window{until}); continuing next run"
        )

    async def _store(self, page: Page) -> bool:
        """Store the page; True when it reached mentions older than the horizon."""
        fresh: list[dict[str, Any]] = []
        stale: list[dict[str, Any]] = []
        for post in page.posts:
            moment = posts.posted_at(post)
            (fresh if moment is None or moment >= self.horizon.oldest else stale).append(post)
        async with self.pool.acquire() as conn, conn.transaction():
            if fresh:
                await users.upsert_users(conn, page.users, full_profile=False)
                # Mentions first: a post both in `data` and in the expansions must count as a new mention.
                media = posts.media_by_key(page.media)
                self.tally.pulled += await posts.store_posts(conn, self.bot.id, fresh, "mention", media=media)
                await posts.store_posts(conn, self.bot.id, page.included_posts, "context")
            if stale:
                self.tally.skipped += await posts.store_posts(
                    conn, self.bot.id, stale, "mention", skipped_reason=self.horizon.reason
                )
        return bool(stale)
