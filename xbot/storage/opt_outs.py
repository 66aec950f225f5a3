"""Rows of `bot_opted_out_authors`: authors who sent a bot an opt-out word; it no longer answers them."""

from __future__ import annotations

from datetime import datetime
from typing import TypeAlias

import asyncpg
from pydantic import BaseModel

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection


# One model for the row; the API answers with it as is.
class OptOut(BaseModel):
    x_user_id: str
    word: str
    x_post_id: str | None
    created_at: datetime


async def record_opt_out(db: Db, bot_id: str, author_id: str, word: str, x_post_id: str) -> None:
    """The first opt-out of an author is kept; later ones change nothing."""
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


async def opted_out_authors(db: Db, bot_id: str) -> list[OptOut]:
    """Oldest first."""
    rows = await db.fetch(
        "SELECT x_user_id, word, x_post_id, created_at FROM bot_opted_out_authors WHERE bot_id = $1"
        " ORDER BY created_at",
        bot_id,
    )
    return [OptOut.model_validate(dict(row)) for row in rows]


async def forget_opt_out(db: Db, bot_id: str, author_id: str) -> bool:
    """False when the author had not opted out."""
    status = await db.execute(
        "DELETE FROM bot_opted_out_authors WHERE bot_id = $1 AND x_user_id = $2", bot_id, author_id
    )
    return str(status).endswith(" 1")
