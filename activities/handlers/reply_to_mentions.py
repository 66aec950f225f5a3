"""`reply_to_mentions`: post this bot's approved drafts exactly once, then tell Discord.

X has no idempotency key, so each reply goes through: intent committed (`posting`,
`post_intent_at`) -> `POST /2/tweets` -> result committed (`posted`, `posted_x_post_id`). A reply
found in `posting` by a later attempt may or may not have gone out (a crash or a timeout between the
two commits): the bot's own recent posts are searched for a reply to that mention first, and it is
posted only when none is found. Outcomes that certainly created nothing (429, 401) return the reply
to `approved`.

X's duplicate-content refusal (403, code 187) means "already posted" only for a reply whose intent
an earlier attempt recorded, and only once the timeline shows the bot's reply to that mention. A
fresh reply refused as duplicate repeats some other post of the bot (two mentions drafted alike):
it is `failed` with failure_kind `duplicate_content`, and generate_replies drafts it again.
A per-bot advisory lock keeps two runs (a zombie attempt and its retry) from interleaving.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from activities.handlers.base import TaskContext
from activities.handlers.x_support import XHandlerBase, int_config
from xbot import discord, outbox
from xbot.errors import RateLimitedError
from xbot.replies import PostableReply
from xbot.storage import advisory_locks, bots, replies
from xbot.storage.bots import BotProfile
from xbot.x.client import XClient
from xbot.x.errors import (
    ReauthorizationRequiredError,
    XClientError,
    XDuplicateContentError,
    XUnauthorizedError,
)

log = logging.getLogger(__name__)

# X's clock and ours differ; search a little before the recorded intent.
SEARCH_MARGIN = timedelta(minutes=10)
MAX_SEARCH_PAGES = 5
# The Discord notifications sent at the end of a run: a bounded tail after the posting.
NOTIFY_MAX_MESSAGES = 50
NOTIFY_MAX_SECONDS = 15.0


class ReplyToMentionsHandler(XHandlerBase):
    task_type = "reply_to_mentions"

    async def run(self, ctx: TaskContext) -> dict[str, Any]:
        batch = int_config(ctx, "max_replies_per_run", 10, 1, 100)
        bot = await bots.load_bot(self.deps.pool, ctx.bot_id)
        async with self._bot_lock(bot.id) as acquired:
            if not acquired:
                await self.log(ctx, "info", "another reply_to_mentions run of this bot is in progress")
                return {"replies_sent": 0, "replies_failed": 0, "skipped": "another run in progress"}
            pending = await replies.postable_replies(self.deps.pool, bot.id, batch)
            if bot.dry_run:
                return await self._dry_run(ctx, pending)
            result = await self._post_all(ctx, bot, pending)
        await self._send_notifications(ctx, bot)  # after the lock: never holds up another run's posting
        return result

    @asynccontextmanager
    async def _bot_lock(self, bot_id: str) -> AsyncIterator[bool]:
        """Session advisory lock: released by PostgreSQL if this process dies mid-run."""
        key = f"xbot.reply_to_mentions:{bot_id}"
        async with self.deps.pool.acquire() as conn:
            acquired = await advisory_locks.try_lock_named(conn, key)
            try:
                yield acquired
            finally:
                if acquired:
                    await advisory_locks.unlock_named(conn, key)

    async def _dry_run(self, ctx: TaskContext, pending: list[PostableReply]) -> dict[str, Any]:
        would_post = 0
        for reply in pending:
            if reply.status == "approved" and await replies.mark_dry_run(self.deps.pool, reply.id):
                would_post += 1
                # The text stays in the reply row (status dry_run); log rows never carry post text.
                await self.log(
                    ctx,
                    "info",
                    f"dry run: would reply to post {reply.in_reply_to_x_post_id} with reply {reply.id}"
                    f" ({len(reply.text)} characters); nothing posted",
                    {"reply_id": reply.id, "in_reply_to": reply.in_reply_to_x_post_id, "dry_run": True},
                )
        return {"replies_sent": 0, "replies_failed": 0, "replies_dry_run": would_post}

    async def _post_all(
        self, ctx: TaskContext, bot: BotProfile, pending: list[PostableReply]
    ) -> dict[str, Any]:
        x = self.x_client(bot, ctx.task_type)
        sent = failed = recovered = 0
        in_flight = [reply for reply in pending if reply.status == "posting"]
        already = await self._find_posted(bot, x, in_flight) if in_flight else {}
        for reply in pending:
            if reply.status == "posting" and reply.in_reply_to_x_post_id in already:
                posted_id = already[reply.in_reply_to_x_post_id]
                await replies.mark_posted(self.deps.pool, reply.id, posted_id)
                await self.log(
                    ctx, "info", f"reply {reply.id} was already posted as {posted_id} by an earlier attempt"
                )
                await self._notify(ctx, bot, reply, posted_id)
                sent += 1
                recovered += 1
                continue
            if reply.status == "approved" and await replies.record_intent(self.deps.pool, reply.id) is None:
                continue  # taken by another run
            outcome = await self._post_one(ctx, bot, x, reply)
            if outcome:
                sent += 1
            else:
                failed += 1
        return {"replies_sent": sent, "replies_failed": failed, "replies_recovered": recovered}

    async def _post_one(self, ctx: TaskContext, bot: BotProfile, x: XClient, reply: PostableReply) -> bool:
        """Post a reply whose intent is recorded. True when it is (now known to be) posted."""
        try:
            posted_id: str | None = await x.create_post(reply.text, reply.in_reply_to_x_post_id)
            note = None
        except XDuplicateContentError as error:
            posted_id = await self._posted_by_earlier_attempt(bot, x, reply)
            if posted_id is None:
                await replies.mark_post_failed(
                    self.deps.pool, reply.id, str(error), failure_kind=replies.DUPLICATE_CONTENT
                )
                await self.log(
                    ctx,
                    "warn",
                    f"X refused reply {reply.id} as duplicate content; generate_replies will redraft it",
                    {"reply_id": reply.id, "status": error.status, "failure_kind": replies.DUPLICATE_CONTENT},
                )
                return False
            note = f"X reported duplicate content; the earlier attempt's post {posted_id} was found"
        except (RateLimitedError, XUnauthorizedError, ReauthorizationRequiredError):
            # Certainly not created: the reply may be posted by a later run without any search.
            await replies.withdraw_intent(self.deps.pool, reply.id)
            raise
        except XClientError as error:
            await replies.mark_post_failed(self.deps.pool, reply.id, str(error))
            await self.log(
                ctx,
                "error",
                f"X refused reply {reply.id}: {error}",
                {"reply_id": reply.id, "status": error.status},
            )
            return False
        # Any other error (timeout, 5xx, malformed answer) leaves the reply in `posting`: it may
        # have gone out, so the next attempt searches before posting again.
        await replies.mark_posted(self.deps.pool, reply.id, posted_id, note)
        await self.log(
            ctx,
            "info",
            f"posted reply {reply.id} to {reply.in_reply_to_x_post_id}",
            {"reply_id": reply.id, "posted_x_post_id": posted_id},
        )
        await self._notify(ctx, bot, reply, posted_id)
        return True

    async def _posted_by_earlier_attempt(
        self, bot: BotProfile, x: XClient, reply: PostableReply
    ) -> str | None:
        """After a duplicate refusal: the bot's reply to this mention, when an earlier attempt
        recorded an intent (loaded as `posting`) and the timeline now shows its post. None for a
        fresh reply: its intent is this run's, so the duplicate is of some other post."""
        if reply.status != "posting":
            return None
        return (await self._find_posted(bot, x, [reply])).get(reply.in_reply_to_x_post_id)

    async def _find_posted(
        self, bot: BotProfile, x: XClient, in_flight: list[PostableReply]
    ) -> dict[str, str]:
        """{mention id: the bot's reply id} among the bot's posts since the earliest open intent."""
        user_id = await self.bot_user_id(bot, x)
        targets = {reply.in_reply_to_x_post_id for reply in in_flight}
        earliest = min((r.post_intent_at for r in in_flight if r.post_intent_at), default=datetime.now(UTC))
        start = min(earliest - SEARCH_MARGIN, datetime.now(UTC) - timedelta(seconds=30))
        found: dict[str, str] = {}
        token: str | None = None
        for _page in range(MAX_SEARCH_PAGES):
            page = await x.user_posts(user_id, start_time=start, pagination_token=token)
            for post in page.posts:
                for reference in post.get("referenced_tweets") or []:
                    if (
                        isinstance(reference, dict)
                        and reference.get("type") == "replied_to"
                        and reference.get("id") in targets
                    ):
                        found.setdefault(reference["id"], post["id"])
            token = page.next_token
            if token is None or targets <= found.keys():
                break
        return found

    async def _notify(
        self, ctx: TaskContext, bot: BotProfile, reply: PostableReply, posted_id: str | None
    ) -> None:
        """Queue the reply's Discord notification (once per reply, however often this runs); it is sent
        by `_send_notifications` after the posting. A failure here never fails or repeats the reply."""
        notice = discord.ReplyNotice(
            bot_name=bot.name,
            mention_author=reply.mention_author_username,
            mention_post_id=reply.in_reply_to_x_post_id,
            reply_text=reply.text,
            reply_post_id=posted_id,
        )
        try:
            await outbox.enqueue_reply_notice(self.deps.pool, bot.id, reply.id, notice)
        except Exception:  # a notification must never undo or repeat a posted reply
            log.exception("queueing the Discord notification of reply %s failed", reply.id)
            await self.log(
                ctx, "warn", f"Discord notification for reply {reply.id} failed", {"reply_id": reply.id}
            )

    async def _send_notifications(self, ctx: TaskContext, bot: BotProfile) -> None:
        """Drain the bot's outbox, briefly: a 429's short retry_after is waited for, longer retries are
        left to later runs and to `send_notifications` tasks. Never raises."""
        try:
            sender = outbox.OutboxSender.for_settings(self.deps.pool, self.deps.http, self.deps.settings)
            report = await sender.drain(
                bot.id, max_messages=NOTIFY_MAX_MESSAGES, max_seconds=NOTIFY_MAX_SECONDS
            )
            for event in report.events:
                if event.outcome != "sent":
                    await self.log(ctx, "warn", outbox.describe(event), outbox.event_context(event))
        except Exception:
            log.exception("sending the Discord notifications of bot %s failed", bot.id)
