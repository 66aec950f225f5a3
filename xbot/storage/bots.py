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


# --- statements moved here by helper S2 (issue 17): bots / task definitions read by the X side -------


async def plan_tier(db: asyncpg.Pool | asyncpg.Connection, bot_id: str) -> str | None:
    tier: str | None = await db.fetchval("SELECT plan_tier FROM bots WHERE id = $1", bot_id)
    return tier


async def set_auth_state(
    db: asyncpg.Pool | asyncpg.Connection, bot_id: str, auth_state: str, *, only_if_changed: bool = False
) -> None:
    """`only_if_changed`: leave `updated_at` alone when the bot is already in that state."""
    await db.execute(
        "UPDATE bots SET auth_state = $2, updated_at = now() WHERE id = $1"
        + (" AND auth_state <> $2" if only_if_changed else ""),
        bot_id,
        auth_state,
    )


@dataclass(frozen=True)
class AuthRow:
    auth_state: str
    plan_tier: str


async def lock_auth(conn: asyncpg.Connection, bot_id: str) -> AuthRow | None:
    """The bot's authorization, its row locked until the transaction ends; None: no such bot."""
    row = await conn.fetchrow("SELECT auth_state, plan_tier FROM bots WHERE id = $1 FOR UPDATE", bot_id)
    return AuthRow(**dict(row)) if row is not None else None


async def set_connected_identity(
    db: asyncpg.Pool | asyncpg.Connection, bot_id: str, x_user_id: str, x_username: str | None
) -> None:
    """Another account than before: its mentions cursor would skip or repeat posts, so it starts over."""
    await db.execute(
        "UPDATE bots SET mentions_since_id = CASE WHEN x_user_id IS DISTINCT FROM $2 THEN NULL"
        " ELSE mentions_since_id END, x_user_id = $2, x_username = coalesce($3, x_username),"
        " updated_at = now() WHERE id = $1",
        bot_id,
        x_user_id,
        x_username,
    )


async def active_task_types(db: asyncpg.Pool | asyncpg.Connection, bot_id: str) -> list[str]:
    rows = await db.fetch(
        "SELECT DISTINCT task_type FROM bot_task_definitions WHERE bot_id = $1 AND is_active", bot_id
    )
    return [row["task_type"] for row in rows]


async def resume_unauthorized_tasks(
    conn: asyncpg.Connection, bot_id: str, task_types: list[str]
) -> list[int]:
    """Definitions of these types whose last failure was for want of authorization (or of a scope)
    start afresh: failure count 0, active again. Returns their ids, sorted."""
    rows = await conn.fetch(
        """
        UPDATE bot_task_definitions d
        SET consecutive_failures = 0, is_active = true, updated_at = now()
        WHERE d.bot_id = $1 AND d.task_type = ANY($2::text[]) AND d.consecutive_failures > 0
          AND (
              SELECT e.error_message FROM bot_task_executions e
              WHERE e.task_definition_id = d.id AND e.status = 'failed'
              ORDER BY e.started_at DESC, e.id DESC LIMIT 1
          ) ~* '(needs re-authorization|lacks the scope)'
        RETURNING d.id
        """,
        bot_id,
        task_types,
    )
    return sorted(row["id"] for row in rows)


@dataclass(frozen=True)
class RateLimitGuard:
    """A task definition's own guard: keep `min_rate_limit_remaining` of `rate_limit_endpoint`."""

    rate_limit_endpoint: str | None
    min_rate_limit_remaining: int


async def rate_limit_guard(
    db: asyncpg.Pool | asyncpg.Connection, bot_id: str, task_id: int
) -> RateLimitGuard | None:
    row = await db.fetchrow(
        "SELECT rate_limit_endpoint, min_rate_limit_remaining FROM bot_task_definitions"
        " WHERE id = $1 AND bot_id = $2",
        task_id,
        bot_id,
    )
    return RateLimitGuard(**dict(row)) if row is not None else None


async def operator_bot_ids(db: asyncpg.Pool | asyncpg.Connection, bot_id: str) -> frozenset[str]:
    """The X user ids of this installation's other bots: never answered by default (bot loops)."""
    rows = await db.fetch("SELECT x_user_id FROM bots WHERE id <> $1 AND x_user_id IS NOT NULL", bot_id)
    return frozenset(row["x_user_id"] for row in rows)
