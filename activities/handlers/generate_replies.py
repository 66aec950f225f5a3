"""`generate_replies` (also the seed's `generate_replys`): one LLM draft per new mention.

Mentions by banned authors or by the bot itself are never drafted. The prompt carries the bot's
persona, the author, and the thread above the mention. Parents not stored yet are looked up for the
whole batch at once, level by level (`GET /2/tweets?ids=`, up to 100 a request); X answers such a
lookup with the posts it can return and an error for each other (deleted, author suspended,
protected): that mention is drafted without the rest of its thread and the reason is logged, so one
unavailable parent never fails the task.

The bot's reply policy (xbot.reply_policy) decides first, mention by mention just before drafting
(so the caps count the drafts made earlier in the same run): a mention it refuses gets a
`skipped_reason` and `skipped_code` and is never drafted; an opt-out word ("stop") silences the bot
for that author for good. Then the optional should-respond gate (a small LLM call), then the daily
budgets (LLM tokens, estimated X spend): once spent, nothing more is drafted that day and the result
says so (`budget_spent`); the mentions wait. A draft the output filter refuses (links, other
@handles, cashtags, banned words) is kept as `rejected_by_filter` with the reason, never posted.

The model and prompt come from the definition's `config.llm_config_id` and `config.prompt_id` (else
the bot's settings, else the global ones), and with `config.vision_config` a mention's images are
described first (see reply_models); each draft records the template, version and model that wrote it.

Replies X refused as duplicate content (see reply_to_mentions) are drafted again first, with the
refused text and a request to vary it. A mention the LLM will not answer (empty, refused) is
recorded as failed and the batch goes on; an LLM that cannot be reached fails the task (retryable)
and a misconfigured one (unknown model, refused parameter or key) fails it for good, both without
touching the remaining mentions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from activities.handlers import reply_models, reply_threads
from activities.handlers.base import HandlerDeps, TaskContext
from activities.handlers.reply_models import RunModels
from activities.handlers.reply_threads import Thread
from activities.handlers.x_support import XHandlerBase, int_config
from xbot import reply_policy
from xbot.errors import NonRetryableTaskError
from xbot.llm.client import (
    LlmConfigurationError,
    LlmReplyRejected,
    LlmUnavailableError,
    MentionPrompt,
    ReplyGenerator,
    Usage,
)
from xbot.replies import RedraftableReply
from xbot.reply_policy import MentionFacts, Prices, ReplyPolicy, Skip
from xbot.storage import bots, llm_usage, opt_outs, posts, replies, reply_policies, users
from xbot.storage.bots import BotProfile
from xbot.storage.posts import StoredPost
from xbot.x.token_store import TokenStore


@dataclass
class _Run:
    """One run's bot, policy and running totals."""

    ctx: TaskContext
    bot: BotProfile
    policy: ReplyPolicy
    models: RunModels
    now: datetime
    operator_bots: frozenset[str] = frozenset()
    skipped: dict[str, int] = field(default_factory=dict)  # skip code -> mentions
    usage: Usage = field(default_factory=Usage)
    budget_spent: str | None = None
    images: dict[str, int] = field(default_factory=dict)  # "described" / "not_described" -> mentions


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
        try:
            policy = await reply_policies.load_policy(self.deps.pool, bot.id)
        except ValidationError as error:  # stored by hand or by an older version: an operator must fix it
            raise NonRetryableTaskError(
                f"the bot's reply policy is invalid ({error.error_count()} errors); PUT /bots/{bot.id}/reply-policy"
            ) from None
        models = await reply_models.resolve(
            self.deps.pool, self.deps.settings, self.generator, bot, ctx.config
        )
        run = _Run(ctx, bot, policy, models, datetime.now(UTC))
        run.operator_bots = await bots.operator_bot_ids(self.deps.pool, bot.id)
        if spent := await self._budget_spent(run):
            return await self._stop_for_budget(run, spent)
        # Replies X refused as duplicate content first (they waited longest), then new mentions.
        work: list[tuple[StoredPost, RedraftableReply | None]] = []
        for refused in await replies.redraftable_replies(self.deps.pool, bot.id, batch):
            mention = await posts.find_post(self.deps.pool, bot.id, refused.mention_x_post_id)
            if mention is not None:
                work.append((mention, refused))
        fresh = await posts.mentions_needing_reply(self.deps.pool, bot.id, bot.x_user_id, batch - len(work))
        # Cheap rules before any X lookup: a mention skipped for who wrote it needs no thread.
        kept: list[StoredPost] = []
        for mention in fresh:
            if await self._skip(run, mention, thread_depth=0) is None:
                kept.append(mention)
        work.extend((mention, None) for mention in kept)
        x = self.x_client(bot, ctx.task_type)
        # Walk far enough up to tell whether a thread is deeper than the policy allows.
        walk = (
            max(depth, min(20, policy.max_thread_depth + 1)) if policy.max_thread_depth is not None else depth
        )
        threads = await reply_threads.walk(self.deps.pool, bot.id, x, [mention for mention, _ in work], walk)
        generated = failed = redrafted = unavailable = filtered = 0
        for mention, redraft in work:
            thread = threads[mention.id]
            if redraft is None and await self._skip(
                run, mention, thread_depth=len(thread.parents) + (thread.gap is not None)
            ):
                continue
            run.budget_spent = await self._budget_spent(run)
            if run.budget_spent is not None:
                break  # the rest waits for tomorrow's budget
            if redraft is None and policy.gate_enabled and not await self._gate(run, mention, thread, depth):
                continue
            if thread.gap is not None:
                unavailable += 1
                await self._log_gap(ctx, mention, *thread.gap)
            outcome = await self._draft(run, mention, Thread(None, thread.parents[:depth]), redraft)
            if outcome == "drafted":
                generated += 1
                redrafted += redraft is not None
            elif outcome == "filtered":
                filtered += 1
            else:
                failed += 1
        result: dict[str, Any] = {"replies_generated": generated, "replies_failed": failed}
        if redrafted:
            result["replies_redrafted"] = redrafted
        if unavailable:
            result["context_unavailable"] = unavailable
        if filtered:
            result["replies_rejected_by_filter"] = filtered
        if run.skipped:
            result["mentions_skipped"] = dict(sorted(run.skipped.items()))
        result.update({f"images_{outcome}": count for outcome, count in sorted(run.images.items())})
        if run.budget_spent is not None:
            await self._stop_for_budget(run, run.budget_spent)
            result["budget_spent"] = run.budget_spent
        return result

    # --- policy -------------------------------------------------------------------------------------

    async def _skip(self, run: _Run, mention: StoredPost, *, thread_depth: int) -> Skip | None:
        """The policy's verdict on a fresh mention; a refusal is recorded on the mention."""
        pool = self.deps.pool
        skip: Skip | None = None
        author = mention.author_x_user_id
        word = reply_policy.opt_out_word(run.policy, mention.text)
        if author is not None and word is not None:
            await opt_outs.record_opt_out(pool, run.bot.id, author, word, mention.x_post_id)
            skip = Skip("opted_out", f"author {author} asked the bot to stop ({word!r}); remembered")
        else:
            facts = await self._facts(mention, thread_depth)
            history = await reply_policies.history(
                pool, run.bot.id, author, mention.conversation_id, run.now, run.operator_bots
            )
            skip = reply_policy.decide(run.policy, facts, history, run.now)
        if skip is not None:
            await self._record_skip(run, mention, skip)
        return skip

    async def _record_skip(self, run: _Run, mention: StoredPost, skip: Skip) -> None:
        await posts.record_skip(self.deps.pool, mention.id, skip.reason, skip.code)
        run.skipped[skip.code] = run.skipped.get(skip.code, 0) + 1
        await self.log(
            run.ctx,
            "info",
            f"mention {mention.x_post_id} not answered: {skip.text()}",
            {"mention_id": mention.x_post_id, "skipped_code": skip.code},
        )

    async def _facts(self, mention: StoredPost, thread_depth: int) -> MentionFacts:
        row = await posts.author_facts(self.deps.pool, mention.id)
        created: datetime | None = None
        if row is not None and row.author_created_at:
            try:
                created = datetime.fromisoformat(row.author_created_at.replace("Z", "+00:00"))
            except ValueError:
                created = None
        return MentionFacts(
            author_id=mention.author_x_user_id,
            text=mention.text,
            lang=row.lang if row else None,
            posted_at=mention.posted_at,
            conversation_id=mention.conversation_id,
            thread_depth=thread_depth,
            author_followers=row.followers_count if row else None,
            author_created_at=created,
        )

    async def _gate(self, run: _Run, mention: StoredPost, thread: Thread, depth: int) -> bool:
        """The should-respond gate; IGNORE is recorded as the mention's skipped reason."""
        options = run.models.options
        if run.policy.gate_model:
            options = replace(options, model=run.policy.gate_model)
        prompt = await self._prompt(run.bot, mention, Thread(None, thread.parents[:depth]), None)
        verdict = await self.generator.should_respond(prompt, options)
        await self._spend(run, verdict.usage)
        if not verdict.respond:
            await self._record_skip(
                run, mention, Skip("gate_ignore", f"should-respond gate: {verdict.reason}")
            )
        return verdict.respond

    async def _budget_spent(self, run: _Run) -> str | None:
        """Why today's budget allows no more drafts, or None."""
        policy = run.policy
        if policy.daily_token_budget is not None:
            spent = await llm_usage.tokens_spent(self.deps.pool, run.bot.id, run.now.date())
            if spent >= policy.daily_token_budget:
                return f"daily LLM token budget spent ({spent} of {policy.daily_token_budget} tokens)"
        if policy.daily_x_spend_usd is not None:
            spend = await reply_policies.x_spend(self.deps.pool, run.bot.id, run.now)
            if spend + self._prices().x_post > policy.daily_x_spend_usd + 1e-9:
                return f"daily X spend budget spent (${spend:.3f} of ${policy.daily_x_spend_usd:.3f})"
        return None

    async def _stop_for_budget(self, run: _Run, reason: str) -> dict[str, Any]:
        await self.log(run.ctx, "warn", f"no more replies drafted today: {reason}", {"budget_spent": reason})
        return {"replies_generated": 0, "replies_failed": 0, "budget_spent": reason}

    async def _spend(self, run: _Run, usage: Usage) -> None:
        run.usage += usage
        await llm_usage.add_usage(
            self.deps.pool, run.bot.id, run.now.date(), usage.tokens_in, usage.tokens_out
        )

    def _prices(self) -> Prices:
        settings = self.deps.settings
        return Prices(
            x_post=settings.x_price_post_usd,
            x_post_with_url=settings.x_price_post_with_url_usd,
            llm_input_per_mtok=settings.llm_price_input_per_mtok_usd,
            llm_output_per_mtok=settings.llm_price_output_per_mtok_usd,
        )

    async def _prompt(
        self,
        bot: BotProfile,
        mention: StoredPost,
        thread: Thread,
        redraft: RedraftableReply | None,
        template: str | None = None,
        images: list[str] | None = None,
    ) -> MentionPrompt:
        author = await users.find_user(self.deps.pool, mention.author_x_user_id)
        return MentionPrompt(
            persona=bot.persona_prompt,
            bot_username=bot.x_username,
            author_username=author.username if author else (mention.author_x_user_id or "unknown"),
            author_name=author.name if author else None,
            author_description=author.description if author else None,
            mention_text=mention.text,
            thread=await reply_threads.context(self.deps.pool, thread),
            refused_reply=redraft.refused_text if redraft else None,
            image_descriptions=images or [],
            template=template,
        )

    async def _images(self, run: _Run, mention: StoredPost) -> list[str]:
        """Alt texts, and the vision model's description (stored once: a retry reuses it or its
        failure). A failure is recorded with the post and logged; the reply is written from the text."""
        alts = reply_models.alt_texts(mention.media)
        vision = run.models.vision
        urls = reply_models.image_urls(mention.media)
        if vision is None or not urls or mention.vision_error is not None:
            return alts
        if mention.image_description is not None:
            return [*alts, f"description: {mention.image_description}"]
        allowed = self.deps.settings.allow_private_urls
        urls, refused = await reply_models.allowed_urls(urls, allow_private=allowed)
        template = vision.template.system_text if vision.template else None
        prompt = await self._prompt(run.bot, mention, Thread(None), None, template, alts)
        try:
            if not urls:
                raise LlmReplyRejected(f"image URLs refused by the outbound URL policy: {'; '.join(refused)}")
            described = await self.generator.describe(prompt, urls, vision.options)
        except (LlmReplyRejected, LlmUnavailableError, LlmConfigurationError) as error:
            if isinstance(error, LlmReplyRejected):
                await self._spend(run, error.usage)
            reason = f"images not described: {error}"
            await posts.record_description(self.deps.pool, mention.id, None, None, reason)
            run.images["not_described"] = run.images.get("not_described", 0) + 1
            await self.log(
                run.ctx, "warn", f"mention {mention.x_post_id}: {reason}; replying from its text",
                {"mention_id": mention.x_post_id, "vision_error": reason[:300]},
            )  # fmt: skip
            return alts
        await self._spend(run, described.usage)
        await posts.record_description(self.deps.pool, mention.id, described.text, described.model, None)
        run.images["described"] = run.images.get("described", 0) + 1
        return [*alts, f"description: {described.text}"]

    async def _draft(
        self, run: _Run, mention: StoredPost, thread: Thread, redraft: RedraftableReply | None
    ) -> str:
        """ "drafted", "filtered" (kept as rejected_by_filter) or "failed"."""
        bot, options, provenance = run.bot, run.models.options, run.models.provenance
        template = run.models.template.system_text if run.models.template else None
        images = await self._images(run, mention)
        prompt = await self._prompt(bot, mention, thread, redraft, template, images)
        try:
            draft = await self.generator.generate(prompt, options)
        except LlmReplyRejected as error:
            await self._spend(run, error.usage)
            tokens = (error.usage.tokens_in, error.usage.tokens_out)
            if redraft is not None:
                await replies.give_up_redraft(self.deps.pool, redraft.id, f"redraft: {error}")
            else:
                await replies.record_generation_failure(
                    self.deps.pool,
                    bot.id,
                    mention.id,
                    mention.x_post_id,
                    str(error),
                    options.model,
                    tokens,
                    provenance,
                )
            await self.log(
                run.ctx,
                "warn",
                f"no reply drafted for mention {mention.x_post_id}: {error}",
                {"mention_id": mention.x_post_id},
            )
            return "failed"
        await self._spend(run, draft.usage)
        tokens = (draft.usage.tokens_in, draft.usage.tokens_out)
        # The model's output is untrusted too (a prompt injection may have steered it).
        refused = reply_policy.check_output(run.policy, draft.text, prompt.author_username, bot.x_username)
        if refused is not None:
            await self.log(
                run.ctx,
                "warn",
                f"draft for mention {mention.x_post_id} rejected by the output filter: {refused}",
                {"mention_id": mention.x_post_id, "filter_reason": refused},
            )
        approved = not bot.approval_required
        if redraft is not None:
            await replies.redraft(
                self.deps.pool,
                redraft.id,
                draft.text,
                draft.model,
                approved=approved,
                tokens=tokens,
                filtered=refused,
                provenance=provenance,
            )
            return "filtered" if refused else "drafted"
        await replies.create_draft(
            self.deps.pool,
            bot.id,
            mention.id,
            mention.x_post_id,
            draft.text,
            draft.model,
            approved=approved,
            tokens=tokens,
            x_cost_usd=reply_policy.x_post_cost(self._prices(), draft.text),
            filtered=refused,
            provenance=provenance,
        )
        return "filtered" if refused else "drafted"

    async def _log_gap(self, ctx: TaskContext, mention: StoredPost, parent_id: str, reason: str) -> None:
        await self.log(
            ctx,
            "warn",
            f"mention {mention.x_post_id} drafted without the thread above post {parent_id}: {reason}",
            {"mention_id": mention.x_post_id, "parent_id": parent_id, "reason": reason},
        )
