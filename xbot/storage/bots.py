"""The parts of a bot row the handlers read, and the few columns they write."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from xbot.errors import NonRetryableTaskError


@dataclass(frozen=True)
class BotProfile:
    id: str
    name: str
    x_user_id: str | None
    x_username: str | None
    persona_prompt: str
    plan_tier: str
    dry_run: bool
    approval_required: bool
    discord_webhook_url: str | None
    llm_model: str | None
    llm_base_url: str | None
    llm_temperature: float | None
    llm_max_tokens: int | None
    mentions_since_id: str | None
    auth_state: str
    llm_api_key_enc: bytes | None = field(default=None, repr=False)  # Fernet, TOKEN_ENCRYPTION_KEY
    token_scope: str | None = None  # the scopes X granted the stored token (space-separated)


_COLUMNS = (
    "id, name, x_user_id, x_username, persona_prompt, plan_tier, dry_run, approval_required,"
    " discord_webhook_url, llm_model, llm_base_url, llm_temperature, llm_max_tokens,"
    " mentions_since_id, auth_state, llm_api_key_enc,"
    " (SELECT t.scope FROM bot_tokens t WHERE t.bot_id = bots.id) AS token_scope"
)


async def load_bot(db: asyncpg.Pool | asyncpg.Connection, bot_id: str) -> BotProfile:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM bots WHERE id = $1", bot_id)
    if row is None:
        raise NonRetryableTaskError(f"bot {bot_id} does not exist")
    return BotProfile(**dict(row))


async def set_x_identity(
    db: asyncpg.Pool | asyncpg.Connection, bot_id: str, x_user_id: str, x_username: str | None
) -> None:
    await db.execute(
        "UPDATE bots SET x_user_id = $2, x_username = coalesce($3, x_username), updated_at = now()"
        " WHERE id = $1",
        bot_id,
        x_user_id,
        x_username,
    )


async def advance_mentions_cursor(db: asyncpg.Pool | asyncpg.Connection, bot_id: str, newest_id: str) -> None:
    """Move `mentions_since_id` forward only: overlapping runs may finish in any order."""
    await db.execute(
        "UPDATE bots SET mentions_since_id = $2, updated_at = now()"
        " WHERE id = $1 AND (mentions_since_id IS NULL OR mentions_since_id::numeric < $2::numeric)",
        bot_id,
        newest_id,
    )


async def banned_user_ids(db: asyncpg.Pool | asyncpg.Connection, bot_id: str) -> set[str]:
    rows = await db.fetch("SELECT x_user_id FROM bot_banned_users WHERE bot_id = $1", bot_id)
    return {row["x_user_id"] for row in rows}
