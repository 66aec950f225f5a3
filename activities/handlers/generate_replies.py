"""`generate_replies` (also the seed's `generate_replys`): one LLM draft per new mention.

Mentions by banned authors or by the bot itself are never drafted. The prompt carries the bot's
persona, the author, and the thread above the mention; parents not stored yet are fetched from X.
A mention the LLM will not answer (empty, refused) is recorded as failed and the batch goes on; an
LLM that cannot be reached fails the task (retryable) without touching the remaining mentions.
"""

from __future__ import annotations

from typing import Any

from activities.handlers.base import HandlerDeps, TaskContext
from activities.handlers.x_support import XHandlerBase, int_config
from xbot.llm import ContextPost, LlmOptions, LlmReplyRejected, MentionPrompt, ReplyGenerator
from xbot.repositories import bots, posts, replies, users
from xbot.repositories.bots import BotProfile
from xbot.repositories.posts import StoredPost
from xbot.repositories.replies import RedraftableReply
from xbot.tokens import TokenStore
from xbot.x_client import XClient
from xbot.x_errors import XForbiddenError, XNotFoundError


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
            bot.llm_model, bot.llm_base_url, bot.llm_temperature, bot.llm_max_tokens
        )
        x = self.x_client(bot)
        # Replies X refused as duplicate content first (they waited longest), then new mentions.
        work: list[tuple[StoredPost, RedraftableReply | None]] = []
        for refused in await replies.redraftable_replies(self.deps.pool, bot.id, batch):
            mention = await posts.find_post(self.deps.pool, bot.id, refused.mention_x_post_id)
            if mention is not None:
                work.append((mention, refused))
        fresh = await posts.mentions_needing_reply(self.deps.pool, bot.id, bot.x_user_id, batch - len(work))
        work.extend((mention, None) for mention in fresh)
        generated = failed = redrafted = 0
        for mention, redraft in work:
            if await self._draft(ctx, bot, x, mention, depth, options, redraft):
                generated += 1
                redrafted += redraft is not None
            else:
                failed += 1
        result = {"replies_generated": generated, "replies_failed": failed}
        if redrafted:
            result["replies_redrafted"] = redrafted
        return result

    async def _draft(
        self,
        ctx: TaskContext,
        bot: BotProfile,
        x: XClient,
        mention: StoredPost,
        depth: int,
        options: LlmOptions,
        redraft: RedraftableReply | None = None,
    ) -> bool:
        author = await users.find_user(self.deps.pool, mention.author_x_user_id)
        prompt = MentionPrompt(
            persona=bot.persona_prompt,
            bot_username=bot.x_username,
            author_username=author.username if author else (mention.author_x_user_id or "unknown"),
            author_name=author.name if author else None,
            author_description=author.description if author else None,
            mention_text=mention.text,
            thread=await self._thread(bot.id, x, mention, depth),
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
        if redraft is not None:
            await replies.redraft(
                self.deps.pool, redraft.id, draft.text, draft.model, approved=not bot.approval_required
            )
            return True
        await replies.create_draft(
            self.deps.pool,
            bot.id,
            mention.id,
            mention.x_post_id,
            draft.text,
            draft.model,
            approved=not bot.approval_required,
        )
        return True

    async def _thread(self, bot_id: str, x: XClient, mention: StoredPost, depth: int) -> list[ContextPost]:
        """Up to `depth` parents of the mention, oldest first; missing ones are fetched and stored."""
        chain: list[ContextPost] = []
        parent_id = mention.in_reply_to_post_id
        while parent_id and len(chain) < depth:
            parent = await posts.find_post(self.deps.pool, bot_id, parent_id)
            if parent is None:
                parent = await self._fetch_parent(bot_id, x, parent_id)
                if parent is None:
                    break
            author = await users.find_user(self.deps.pool, parent.author_x_user_id)
            chain.append(ContextPost(author.username if author else "unknown", parent.text))
            parent_id = parent.in_reply_to_post_id
        chain.reverse()
        return chain

    async def _fetch_parent(self, bot_id: str, x: XClient, post_id: str) -> StoredPost | None:
        try:
            page = await x.get_post(post_id)
        except (XNotFoundError, XForbiddenError):
            return None  # deleted or protected: the thread stops here
        async with self.deps.pool.acquire() as conn, conn.transaction():
            await users.upsert_users(conn, page.users, full_profile=False)
            await posts.store_posts(conn, bot_id, page.posts, "context")
            await posts.store_posts(conn, bot_id, page.included_posts, "context")
        return await posts.find_post(self.deps.pool, bot_id, post_id)
