"""Reply policy storage and the history its rules count (see xbot.reply_policy for the rules)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeAlias

import asyncpg

from xbot.reply_policy import History, ReplyPolicy, Skip

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


async def operator_bot_ids(db: Db, bot_id: str) -> frozenset[str]:
    """The X user ids of this installation's other bots: never answered by default (bot loops)."""
    rows = await db.fetch("SELECT x_user_id FROM bots WHERE id <> $1 AND x_user_id IS NOT NULL", bot_id)
    return frozenset(row["x_user_id"] for row in rows)


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


async def record_skip(db: Db, pulled_post_id: int, skip: Skip) -> None:
    """The mention is never drafted; why is kept on it (listed by the API, counted in /metrics)."""
    await db.execute(
        "UPDATE pulled_posts SET skipped_reason = $2, skipped_code = $3 WHERE id = $1 AND skipped_reason IS NULL",
        pulled_post_id,
        skip.reason[:500],
        skip.code,
    )


async def record_opt_out(db: Db, bot_id: str, author_id: str, word: str, x_post_id: str) -> None:
    await db.execute(
        """
        INSERT INTO bot_opted_out_authors (bot_id, x_user_id, word, x_post_id) VALUES ($1, $2, $3, $4)
        ON CONFLICT (bot_id, x_user_id) DO NOTHING
        """,
        bot_id,
        author_id,
        word,
        x_post_id,
    )


async def opted_out_authors(db: Db, bot_id: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT x_user_id, word, x_post_id, created_at FROM bot_opted_out_authors WHERE bot_id = $1"
        " ORDER BY created_at",
        bot_id,
    )
    return [dict(row) for row in rows]


async def forget_opt_out(db: Db, bot_id: str, author_id: str) -> bool:
    status = await db.execute(
        "DELETE FROM bot_opted_out_authors WHERE bot_id = $1 AND x_user_id = $2", bot_id, author_id
    )
    return str(status).endswith(" 1")


# --- spend ------------------------------------------------------------------------------------------


async def add_usage(db: Db, bot_id: str, day: date, tokens_in: int, tokens_out: int) -> None:
    if tokens_in == 0 and tokens_out == 0:
        return
    await db.execute(
        """
        INSERT INTO bot_llm_usage (bot_id, day, tokens_in, tokens_out, calls) VALUES ($1, $2, $3, $4, 1)
        ON CONFLICT (bot_id, day) DO UPDATE SET tokens_in = bot_llm_usage.tokens_in + EXCLUDED.tokens_in,
            tokens_out = bot_llm_usage.tokens_out + EXCLUDED.tokens_out, calls = bot_llm_usage.calls + 1
        """,
        bot_id,
        day,
        tokens_in,
        tokens_out,
    )


async def tokens_spent(db: Db, bot_id: str, day: date) -> int:
    value = await db.fetchval(
        "SELECT tokens_in + tokens_out FROM bot_llm_usage WHERE bot_id = $1 AND day = $2", bot_id, day
    )
    return int(value or 0)


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
    row = await db.fetchrow(
        "SELECT tokens_in, tokens_out, calls FROM bot_llm_usage WHERE bot_id = $1 AND day = $2",
        bot_id,
        now.date(),
    )
    return {
        "day": now.date().isoformat(),
        "tokens_in": int(row["tokens_in"]) if row else 0,
        "tokens_out": int(row["tokens_out"]) if row else 0,
        "llm_calls": int(row["calls"]) if row else 0,
        "x_spend_usd": round(await x_spend(db, bot_id, now), 6),
    }
