"""Rows of `bot_llm_usage`: LLM tokens and calls per bot and UTC day (drafts, gates, image
descriptions), counted against the reply policy's daily token budget."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import TypeAlias

import asyncpg

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True)
class DayUsage:
    tokens_in: int = 0
    tokens_out: int = 0
    calls: int = 0


@dataclass(frozen=True)
class BotTokens:
    bot_id: str
    tokens_in: int
    tokens_out: int


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


async def day_usage(db: Db, bot_id: str, day: date) -> DayUsage:
    row = await db.fetchrow(
        "SELECT tokens_in, tokens_out, calls FROM bot_llm_usage WHERE bot_id = $1 AND day = $2", bot_id, day
    )
    if row is None:
        return DayUsage()
    return DayUsage(int(row["tokens_in"]), int(row["tokens_out"]), int(row["calls"]))


async def tokens_by_bot(db: Db) -> list[BotTokens]:
    """Every bot's tokens over all days (for /metrics), by bot id."""
    rows = await db.fetch(
        "SELECT bot_id, sum(tokens_in) AS t_in, sum(tokens_out) AS t_out FROM bot_llm_usage GROUP BY 1 ORDER BY 1"
    )
    return [BotTokens(row["bot_id"], row["t_in"], row["t_out"]) for row in rows]
