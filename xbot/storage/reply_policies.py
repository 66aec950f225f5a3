"""Rows of `bot_reply_policies`, and the reply history the policy's rules count (see xbot.reply_policy).

`history` and `x_spend` read `post_replies` (with the mentions and opt-outs) for the policy only; they
stay beside the policy so its one notion of a counted reply (`_COUNTED`) is written once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeAlias

import asyncpg

from xbot.reply_policy import History, ReplyPolicy
from xbot.storage import llm_usage

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection

# Replies that count against caps: drafted and not thrown away (failed drafts and rejected ones
# never reach X; a refused-by-filter draft is not posted either), and refused duplicates that
# generate_replies will redraft (they may still go out).
_COUNTED = (
    "('pending_approval', 'approved', 'posting', 'posted', 'dry_run')"
    " OR (r.status = 'failed' AND r.failure_kind IS NOT NULL)"
)


async def load_policy(db: Db, bot_id: str) -> ReplyPolicy:
    """The stored policy, or the defaults when the bot has none."""
    raw = await db.fetchval("SELECT policy FROM bot_reply_policies WHERE bot_id = $1", bot_id)
    return ReplyPolicy.model_validate(raw) if raw is not None else ReplyPolicy()


async def save_policy(db: Db, bot_id: str, policy: ReplyPolicy) -> None:
    await db.execute(
        """
        INSERT INTO bot_reply_policies (bot_id, policy) VALUES ($1, $2)
        ON CONFLICT (bot_id) DO UPDATE SET policy = EXCLUDED.policy, updated_at = now()
        """,
        bot_id,
        policy.model_dump(mode="json"),
    )


def day_start(now: datetime) -> datetime:
    return datetime(now.year, now.month, now.day, tzinfo=UTC)


async def history(
    db: Db,
    bot_id: str,
    author_id: str | None,
    conversation_id: str | None,
    now: datetime,
    operator_bots: frozenset[str],
) -> History:
    row = await db.fetchrow(
        f"""
        SELECT
          (SELECT count(*) FROM post_replies r
            WHERE r.bot_id = $1 AND (r.status IN {_COUNTED}) AND r.created_at >= $2) AS today,
          (SELECT count(*) FROM post_replies r JOIN pulled_posts p ON p.id = r.pulled_post_id
            WHERE r.bot_id = $1 AND (r.status IN {_COUNTED}) AND r.created_at >= $2
              AND p.author_x_user_id = $3) AS author_today,
          (SELECT max(r.created_at) FROM post_replies r JOIN pulled_posts p ON p.id = r.pulled_post_id
            WHERE r.bot_id = $1 AND (r.status IN {_COUNTED}) AND p.author_x_user_id = $3) AS last_to_author,
          (SELECT count(*) FROM post_replies r JOIN pulled_posts p ON p.id = r.pulled_post_id
            WHERE r.bot_id = $1 AND (r.status IN {_COUNTED}) AND p.conversation_id = $4) AS conversation,
          EXISTS (SELECT 1 FROM bot_opted_out_authors o WHERE o.bot_id = $1 AND o.x_user_id = $3) AS opted_out
        """,
        bot_id,
        day_start(now),
        author_id,
        conversation_id,
    )
    assert row is not None
    return History(
        replies_today=row["today"],
        author_replies_today=row["author_today"] if author_id else 0,
        last_reply_to_author=row["last_to_author"] if author_id else None,
        conversation_replies=row["conversation"] if conversation_id else 0,
        opted_out=row["opted_out"],
        operator_bot_ids=operator_bots,
    )


# --- spend ------------------------------------------------------------------------------------------


async def x_spend(db: Db, bot_id: str, now: datetime) -> float:
    """Estimated X spend of today's drafts that are or may be posted (each priced when drafted)."""
    value: Decimal | None = await db.fetchval(
        f"SELECT sum(r.x_cost_usd) FROM post_replies r WHERE r.bot_id = $1 AND r.created_at >= $2"
        f" AND (r.status IN {_COUNTED})",
        bot_id,
        day_start(now),
    )
    return float(value or 0)


async def spend_today(db: Db, bot_id: str, now: datetime) -> dict[str, Any]:
    usage = await llm_usage.day_usage(db, bot_id, now.date())
    return {
        "day": now.date().isoformat(),
        "tokens_in": usage.tokens_in,
        "tokens_out": usage.tokens_out,
        "llm_calls": usage.calls,
        "x_spend_usd": round(await x_spend(db, bot_id, now), 6),
    }
