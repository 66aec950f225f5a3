"""`generate_replies` (also the seed's `generate_replys`): one LLM draft per new mention.

Mentions by banned authors or by the bot itself are never drafted. The prompt carries the bot's
persona, the author, and the thread above the mention. Parents not stored yet are looked up for the
whole batch at once, level by level (`GET /2/tweets?ids=`, up to 100 a request); X answers such a
lookup with the posts it can return and an error for each other (deleted, author suspended,
protected): that mention is drafted without the rest of its thread and the reason is logged, so one
unavailable parent never fails the task.

Replies X refused as duplicate content (see reply_to_mentions) are drafted again first, with the
refused text and a request to vary it. A mention the LLM will not answer (empty, refused) is
recorded as failed and the batch goes on; an LLM that cannot be reached fails the task (retryable)
and a misconfigured one (unknown model, refused parameter or key) fails it for good, both without
touching the remaining mentions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from activities.handlers.base import HandlerDeps, TaskContext
from activities.handlers.x_support import XHandlerBase, int_config
from xbot.crypto import TokenCipherError, cipher_from_settings
from xbot.errors import NonRetryableTaskError
from xbot.llm import ContextPost, LlmOptions, LlmReplyRejected, MentionPrompt, ReplyGenerator
from xbot.repositories import bots, posts, replies, users
from xbot.repositories.bots import BotProfile
from xbot.repositories.posts import StoredPost
from xbot.repositories.replies import RedraftableReply
from xbot.tokens import TokenStore
from xbot.x_client import MAX_IDS_PER_LOOKUP, XClient, missing_posts
from xbot.x_errors import XForbiddenError, XNotFoundError


@dataclass
class _Thread:
    """The posts above one mention, nearest first, and why the walk up stopped early, if it did."""

    next_id: str | None
    parents: list[StoredPost] = field(default_factory=list)
    gap: tuple[str, str] | None = None  # (post id, reason) of the first parent X could not return


class GenerateRepliesHandler(XHandlerBase):
    task_type = "generate_replies"

    def __init__(
        self, deps: HandlerDeps, tokens: TokenStore | None = None, generator: ReplyGenerator | None = None
    ) -> None:
        super().__init__(deps, tokens)
        self.generator = generator or ReplyGenerator(deps.settings)

    async def run(self, ctx: TaskContext) -> dict[str, Any]:
        batch = int_config(ctx, "max_replies_per_run", 20, 1, 500)
        depth = int_config(ctx, "context_depth", 3, 0, 20)
        bot = await bots.load_bot(self.deps.pool, ctx.bot_id)
        options = self.generator.options_for(
            bot.llm_model,
            bot.llm_base_url,
            bot.llm_temperature,
            bot.llm_max_tokens,
            api_key=self._bot_llm_key(bot),
        )
        # Replies X refused as duplicate content first (they waited longest), then new mentions.
        work: list[tuple[StoredPost, RedraftableReply | None]] = []
        for refused in await replies.redraftable_replies(self.deps.pool, bot.id, batch):
            mention = await posts.find_post(self.deps.pool, bot.id, refused.mention_x_post_id)
            if mention is not None:
                work.append((mention, refused))
        fresh = await posts.mentions_needing_reply(self.deps.pool, bot.id, bot.x_user_id, batch - len(work))
        work.extend((mention, None) for mention in fresh)
        x = self.x_client(bot, ctx.task_type)
        threads = await self._threads(bot.id, x, [mention for mention, _ in work], depth)
        generated = failed = redrafted = unavailable = 0
        for mention, redraft in work:
            thread = threads[mention.id]
            if thread.gap is not None:
                unavailable += 1
                await self._log_gap(ctx, mention, *thread.gap)
            if await self._draft(ctx, bot, mention, thread, options, redraft):
                generated += 1
                redrafted += redraft is not None
            else:
                failed += 1
        result = {"replies_generated": generated, "replies_failed": failed}
        if redrafted:
            result["replies_redrafted"] = redrafted
        if unavailable:
            result["context_unavailable"] = unavailable
        return result

    def _bot_llm_key(self, bot: BotProfile) -> str | None:
        """The bot's own LLM key, decrypted; None when it has none."""
        if bot.llm_api_key_enc is None:
            return None
        try:
            return cipher_from_settings(self.deps.settings).decrypt(bot.llm_api_key_enc)
        except TokenCipherError as error:  # its message names the setting, never the key
            raise NonRetryableTaskError(f"the bot's llm_api_key cannot be read: {error}") from None

    async def _draft(
        self,
        ctx: TaskContext,
        bot: BotProfile,
        mention: StoredPost,
        thread: _Thread,
        options: LlmOptions,
        redraft: RedraftableReply | None,
    ) -> bool:
        author = await users.find_user(self.deps.pool, mention.author_x_user_id)
        prompt = MentionPrompt(
            persona=bot.persona_prompt,
            bot_username=bot.x_username,
            author_username=author.username if author else (mention.author_x_user_id or "unknown"),
            author_name=author.name if author else None,
            author_description=author.description if author else None,
            mention_text=mention.text,
            thread=await self._context(thread),
            refused_reply=redraft.refused_text if redraft else None,
        )
        try:
            draft = await self.generator.generate(prompt, options)
        except LlmReplyRejected as error:
            if redraft is not None:
                await replies.give_up_redraft(self.deps.pool, redraft.id, f"redraft: {error}")
            else:
                await replies.record_generation_failure(
                    self.deps.pool, bot.id, mention.id, mention.x_post_id, str(error), options.model
                )
            await self.log(
                ctx,
                "warn",
                f"no reply drafted for mention {mention.x_post_id}: {error}",
                {"mention_id": mention.x_post_id},
            )
            return False
        approved = not bot.approval_required
        if redraft is not None:
            await replies.redraft(self.deps.pool, redraft.id, draft.text, draft.model, approved=approved)
            return True
        await replies.create_draft(
            self.deps.pool, bot.id, mention.id, mention.x_post_id, draft.text, draft.model, approved=approved
        )
        return True

    async def _context(self, thread: _Thread) -> list[ContextPost]:
        """The thread for the prompt, oldest first."""
        chain: list[ContextPost] = []
        for parent in reversed(thread.parents):
            author = await users.find_user(self.deps.pool, parent.author_x_user_id)
            chain.append(ContextPost(author.username if author else "unknown", parent.text))
        return chain

    async def _threads(
        self, bot_id: str, x: XClient, mentions: list[StoredPost], depth: int
    ) -> dict[int, _Thread]:
        """Up to `depth` parents of every mention, one level at a time: each level is one database
        read and, for the parents not stored yet, one X lookup per 100 (whose expansions often bring
        the next level along)."""
        threads = {mention.id: _Thread(mention.in_reply_to_post_id) for mention in mentions}
        unavailable: dict[str, str] = {}  # post id -> why X did not return it
        for _level in range(depth):
            wanted = sorted({t.next_id for t in threads.values() if t.next_id})
            if not wanted:
                break
            found = await posts.find_posts(self.deps.pool, bot_id, wanted)
            missing = [post_id for post_id in wanted if post_id not in found and post_id not in unavailable]
            if missing:
                unavailable.update(await self._look_up(bot_id, x, missing))
                found.update(await posts.find_posts(self.deps.pool, bot_id, missing))
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

    async def _look_up(self, bot_id: str, x: XClient, post_ids: list[str]) -> dict[str, str]:
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
            async with self.deps.pool.acquire() as conn, conn.transaction():
                await users.upsert_users(conn, page.users, full_profile=False)
                await posts.store_posts(conn, bot_id, page.posts, "context")
                await posts.store_posts(conn, bot_id, page.included_posts, "context")
            reasons.update(missing_posts(page, chunk))
        return reasons

    async def _log_gap(self, ctx: TaskContext, mention: StoredPost, parent_id: str, reason: str) -> None:
        await self.log(
            ctx,
            "warn",
            f"mention {mention.x_post_id} drafted without the thread above post {parent_id}: {reason}",
            {"mention_id": mention.x_post_id, "parent_id": parent_id, "reason": reason},
        )
