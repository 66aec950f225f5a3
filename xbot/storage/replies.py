"""Reply drafts and their life: generated -> (approved) -> posting -> posted, once per bot and mention.

States (`post_replies.status`):
- `pending_approval`: drafted for a bot with `approval_required`; waits for `approve_reply`.
- `approved`: may be posted.
- `posting`: the intent is recorded (`post_intent_at`) and the X call may have gone out; the outcome
  is unknown until a later attempt finds the bot's reply among its posts, or posts it.
- `rejected_by_filter`: the output filter (xbot.reply_policy.check_output) refused the draft; the
  reason is in `error_message`; never posted (an edit that passes the filter revives it).
- `posted`, `dry_run`, `rejected`: final. `failed`: generation or X refused it; an edit revives it.
  A failed reply with a `failure_kind` (X refused it as duplicate content) is redrafted by the next
  `generate_replies` run, at most `MAX_REDRAFTS` times.

The types of a reply (`Reply`, `PostableReply`, the `ReplyError`s, ...) are in xbot.replies.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from xbot.replies import (
    PostableReply,
    Provenance,
    RedraftableReply,
    Reply,
    ReplyNotFoundError,
    ReplyStateError,
    ReplyTextError,
)
from xbot.storage.pages import Where, newest_first
from xbot.x.text import check_post_text

FINAL_STATES = ("posted", "dry_run", "rejected")
DUPLICATE_CONTENT = "duplicate_content"
MAX_REDRAFTS = 2


# The one query for `Reply`; callers add their WHERE clause on `r`.
_SELECT_REPLY = """
SELECT r.id, r.bot_id, r.pulled_post_id, r.in_reply_to_x_post_id, r.status, r.text, r.llm_model,
       r.error_message, r.failure_kind, r.posted_x_post_id, r.posted_at, r.created_at, r.updated_at,
       r.tokens_in, r.tokens_out, r.x_cost_usd::float8 AS x_cost_usd,
       r.prompt_template_id, t.name AS prompt_template_name, r.prompt_version, r.llm_config_id,
       p.image_description, p.vision_error,
       p.text AS mention_text, u.username AS mention_author_username,
       r.post_intent_at, r.discord_notified_at
FROM post_replies r
JOIN pulled_posts p ON p.id = r.pulled_post_id
LEFT JOIN x_users u ON u.x_user_id = p.author_x_user_id
LEFT JOIN prompt_templates t ON t.id = r.prompt_template_id
"""


def _reply(row: asyncpg.Record) -> Reply:
    return Reply.model_validate(dict(row))


# --- drafting (generate_replies) ----------------------------------------------------------------


def _draft_state(approved: bool, filtered: str | None) -> tuple[str, str | None]:
    """A new text's status and error message: kept as `rejected_by_filter` when the filter refused it."""
    if filtered:
        return "rejected_by_filter", f"output filter: {filtered}"[:500]
    return ("approved" if approved else "pending_approval"), None


async def create_draft(
    db: asyncpg.Pool | asyncpg.Connection,
    bot_id: str,
    pulled_post_id: int,
    in_reply_to: str,
    text: str,
    model: str,
    *,
    approved: bool,
    tokens: tuple[int, int] | None = None,
    x_cost_usd: float | None = None,
    filtered: str | None = None,
    provenance: Provenance = Provenance(),
) -> int | None:
    """The new reply id, or None when the mention already has a reply row (an overlapping run).
    `filtered`: why the output filter refused the text; it is kept as `rejected_by_filter`."""
    status, error = _draft_state(approved, filtered)
    reply_id: int | None = await db.fetchval(
        """
        INSERT INTO post_replies (bot_id, pulled_post_id, in_reply_to_x_post_id, status, text, llm_model,
                                  error_message, tokens_in, tokens_out, x_cost_usd,
                                  prompt_template_id, prompt_version, llm_config_id)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
        ON CONFLICT (bot_id, pulled_post_id) DO NOTHING
        RETURNING id
        """,
        bot_id,
        pulled_post_id,
        in_reply_to,
        status,
        text,
        model,
        error,
        tokens[0] if tokens else None,
        tokens[1] if tokens else None,
        None if filtered else x_cost_usd,
        *provenance.values(),
    )
    return reply_id


async def record_generation_failure(
    db: asyncpg.Pool | asyncpg.Connection,
    bot_id: str,
    pulled_post_id: int,
    in_reply_to: str,
    error: str,
    model: str | None,
    tokens: tuple[int, int] | None = None,
    provenance: Provenance = Provenance(),
) -> None:
    await db.execute(
        """
        INSERT INTO post_replies (bot_id, pulled_post_id, in_reply_to_x_post_id, status, error_message,
                                  llm_model, tokens_in, tokens_out, prompt_template_id, prompt_version,
                                  llm_config_id)
        VALUES ($1, $2, $3, 'failed', $4, $5, $6, $7, $8, $9, $10)
        ON CONFLICT (bot_id, pulled_post_id) DO NOTHING
        """,
        bot_id,
        pulled_post_id,
        in_reply_to,
        error[:500],
        model,
        tokens[0] if tokens else None,
        tokens[1] if tokens else None,
        *provenance.values(),
    )


async def redraftable_replies(
    db: asyncpg.Pool | asyncpg.Connection, bot_id: str, limit: int
) -> list[RedraftableReply]:
    """Oldest first: this bot's replies refused as duplicate content, not redrafted too often."""
    rows = await db.fetch(
        """
        SELECT id, in_reply_to_x_post_id AS mention_x_post_id, text AS refused_text FROM post_replies
        WHERE bot_id = $1 AND status = 'failed' AND failure_kind = $2 AND redraft_count < $3
        ORDER BY id
        LIMIT $4
        """,
        bot_id,
        DUPLICATE_CONTENT,
        MAX_REDRAFTS,
        limit,
    )
    return [RedraftableReply(**dict(row)) for row in rows]


async def redraft(
    db: asyncpg.Pool | asyncpg.Connection,
    reply_id: int,
    text: str,
    model: str,
    *,
    approved: bool,
    tokens: tuple[int, int] | None = None,
    filtered: str | None = None,
    provenance: Provenance = Provenance(),
) -> bool:
    """A new text for a reply refused as duplicate content; False when it changed meanwhile."""
    status = await db.execute(
        """
        UPDATE post_replies
        SET text = $2, llm_model = $3, status = $4, error_message = $5, failure_kind = NULL,
            prompt_template_id = $8, prompt_version = $9, llm_config_id = $10,
            post_intent_at = NULL, redraft_count = redraft_count + 1, updated_at = now(),
            tokens_in = coalesce(tokens_in, 0) + coalesce($6, 0), tokens_out = coalesce(tokens_out, 0) + coalesce($7, 0)
        WHERE id = $1 AND status = 'failed' AND failure_kind IS NOT NULL
        """,
        reply_id,
        text,
        model,
        *_draft_state(approved, filtered),
        tokens[0] if tokens else None,
        tokens[1] if tokens else None,
        *provenance.values(),
    )
    return str(status).endswith(" 1")


async def give_up_redraft(db: asyncpg.Pool | asyncpg.Connection, reply_id: int, error: str) -> None:
    """The LLM gave nothing postable for the redraft: the reply stays failed, for good."""
    await db.execute(
        "UPDATE post_replies SET failure_kind = NULL, error_message = $2, updated_at = now()"
        " WHERE id = $1 AND status = 'failed'",
        reply_id,
        error[:500],
    )


# --- posting (reply_to_mentions) ----------------------------------------------------------------


async def postable_replies(
    db: asyncpg.Pool | asyncpg.Connection, bot_id: str, limit: int
) -> list[PostableReply]:
    """This bot's approved drafts and its intents without a result, oldest first."""
    rows = await db.fetch(
        """
        SELECT r.id, r.status, r.text, r.in_reply_to_x_post_id, r.post_intent_at,
               u.username AS mention_author_username
        FROM post_replies r
        JOIN pulled_posts p ON p.id = r.pulled_post_id
        LEFT JOIN x_users u ON u.x_user_id = p.author_x_user_id
        WHERE r.bot_id = $1 AND r.status IN ('approved', 'posting') AND r.text IS NOT NULL
        ORDER BY r.id
        LIMIT $2
        """,
        bot_id,
        limit,
    )
    return [PostableReply(**dict(row)) for row in rows]


async def record_intent(db: asyncpg.Pool | asyncpg.Connection, reply_id: int) -> datetime | None:
    """Approved -> posting, committed before the X call. None if another run took it first."""
    intent: datetime | None = await db.fetchval(
        "UPDATE post_replies SET status = 'posting', post_intent_at = now(), updated_at = now()"
        " WHERE id = $1 AND status = 'approved' RETURNING post_intent_at",
        reply_id,
    )
    return intent


async def withdraw_intent(db: asyncpg.Pool | asyncpg.Connection, reply_id: int) -> None:
    """Posting -> approved, only when X certainly did not create the post (429, 401, not sent)."""
    await db.execute(
        "UPDATE post_replies SET status = 'approved', post_intent_at = NULL, updated_at = now()"
        " WHERE id = $1 AND status = 'posting'",
        reply_id,
    )


async def mark_posted(
    db: asyncpg.Pool | asyncpg.Connection,
    reply_id: int,
    posted_x_post_id: str | None,
    note: str | None = None,
) -> None:
    await db.execute(
        "UPDATE post_replies SET status = 'posted', posted_x_post_id = $2, posted_at = now(),"
        " error_message = $3, updated_at = now() WHERE id = $1 AND status = 'posting'",
        reply_id,
        posted_x_post_id,
        note,
    )


async def mark_post_failed(
    db: asyncpg.Pool | asyncpg.Connection, reply_id: int, error: str, failure_kind: str | None = None
) -> None:
    """X refused the reply; with a `failure_kind` (DUPLICATE_CONTENT) generate_replies redrafts it."""
    await db.execute(
        "UPDATE post_replies SET status = 'failed', error_message = $2, failure_kind = $3, updated_at = now()"
        " WHERE id = $1 AND status = 'posting'",
        reply_id,
        error[:500],
        failure_kind,
    )


async def mark_dry_run(db: asyncpg.Pool | asyncpg.Connection, reply_id: int) -> bool:
    status = await db.execute(
        "UPDATE post_replies SET status = 'dry_run', updated_at = now() WHERE id = $1 AND status = 'approved'",
        reply_id,
    )
    return status.endswith(" 1")


async def mark_discord_notified(db: asyncpg.Pool | asyncpg.Connection, reply_id: int) -> None:
    await db.execute(
        "UPDATE post_replies SET discord_notified_at = now(), updated_at = now() WHERE id = $1", reply_id
    )


# --- operator actions (the HTTP API) ------------------------------------------------------------


async def get_reply(db: asyncpg.Pool | asyncpg.Connection, bot_id: str, reply_id: int) -> Reply:
    row = await db.fetchrow(_SELECT_REPLY + " WHERE r.bot_id = $1 AND r.id = $2", bot_id, reply_id)
    if row is None:
        raise ReplyNotFoundError(bot_id, reply_id)
    return _reply(row)


async def list_replies(
    db: asyncpg.Pool | asyncpg.Connection,
    bot_id: str,
    *,
    status: str | None,
    before: tuple[datetime, int] | None,
    limit: int,
) -> list[Reply]:
    """Newest first; `before`: the (created_at, id) the previous page ended with."""
    where = Where("r.bot_id = $1", args=(bot_id,))
    where.equal("r.status", status)
    rows = await newest_first(
        db, _SELECT_REPLY, where, order=("r.created_at", "r.id"), before=before, limit=limit
    )
    return [_reply(row) for row in rows]


async def _change(
    db: asyncpg.Pool | asyncpg.Connection,
    bot_id: str,
    reply_id: int,
    action: str,
    allowed: tuple[str, ...],
    assignments: str,
    *args: object,
) -> Reply:
    """Lock the row, check its state, apply `assignments` (SQL using $3...), return the new row."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            return await _change(conn, bot_id, reply_id, action, allowed, assignments, *args)
    async with db.transaction():
        current = await db.fetchrow(
            "SELECT status FROM post_replies WHERE bot_id = $1 AND id = $2 FOR UPDATE", bot_id, reply_id
        )
        if current is None:
            raise ReplyNotFoundError(bot_id, reply_id)
        if current["status"] not in allowed:
            raise ReplyStateError(reply_id, current["status"], action, allowed)
        await db.execute(
            f"UPDATE post_replies SET {assignments}, updated_at = now() WHERE bot_id = $1 AND id = $2",
            bot_id,
            reply_id,
            *args,
        )
        return await get_reply(db, bot_id, reply_id)


async def approve_reply(db: asyncpg.Pool | asyncpg.Connection, bot_id: str, reply_id: int) -> Reply:
    """pending_approval -> approved; the next reply_to_mentions run posts it."""
    return await _change(db, bot_id, reply_id, "approve", ("pending_approval",), "status = 'approved'")


async def reject_reply(db: asyncpg.Pool | asyncpg.Connection, bot_id: str, reply_id: int) -> Reply:
    """A draft that will never be posted; the mention gets no reply."""
    return await _change(
        db,
        bot_id,
        reply_id,
        "reject",
        ("pending_approval", "approved", "failed", "rejected_by_filter"),
        "status = 'rejected'",
    )


async def edit_reply_text(
    db: asyncpg.Pool | asyncpg.Connection, bot_id: str, reply_id: int, text: str
) -> Reply:
    """New text for a draft not posted yet. A failed reply becomes a draft again: approved when the
    bot posts without approval, pending_approval otherwise."""
    try:
        clean = check_post_text(text)
    except ValueError as error:
        raise ReplyTextError(str(error)) from None
    return await _change(
        db,
        bot_id,
        reply_id,
        "edit",
        ("pending_approval", "approved", "failed", "rejected_by_filter"),
        # The operator's own text is trusted: an edit revives a draft the output filter refused.
        """text = $3, error_message = NULL, post_intent_at = NULL, failure_kind = NULL,
           status = CASE WHEN status NOT IN ('failed', 'rejected_by_filter') THEN status
                         WHEN (SELECT approval_required FROM bots WHERE id = $1) THEN 'pending_approval'
                         ELSE 'approved' END""",
        clean,
    )


async def filtered_counts(db: asyncpg.Pool | asyncpg.Connection) -> list[tuple[str, int]]:
    """(bot id, drafts the output filter refused) for every bot (for /metrics)."""
    rows = await db.fetch(
        "SELECT bot_id, count(*) AS n FROM post_replies WHERE status = 'rejected_by_filter' GROUP BY 1 ORDER BY 1"
    )
    return [(row["bot_id"], row["n"]) for row in rows]
