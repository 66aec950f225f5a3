"""The `bots` table (and its child `bot_banned_users`): the row type and every statement on them.

`BotFields` declares the columns every reader of a bot sees, once: the worker reads them as a
`BotProfile` (with the cursor and the sealed LLM key it needs), the API returns them as
`xbot.bots.Bot` (with the webhook URL masked and the token health it derives).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from xbot.errors import NonRetryableTaskError
from xbot.storage.pool import Executor


class BotFields(BaseModel):
    """The stored settings of a bot (plain types: rows written elsewhere stay readable)."""

    model_config = ConfigDict(extra="ignore")

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
    auth_state: str


class BotProfile(BotFields):
    """A bot row as the task handlers read it: its settings, mention cursor and sealed secrets."""

    model_config = ConfigDict(frozen=True)

    mentions_since_id: str | None
    llm_api_key_enc: bytes | None = Field(default=None, repr=False)  # Fernet, TOKEN_ENCRYPTION_KEY
    token_scope: str | None = None  # the scopes X granted the stored token (space-separated)


_PROFILE_COLUMNS = (
    "id, name, x_user_id, x_username, persona_prompt, plan_tier, dry_run, approval_required,"
    " discord_webhook_url, llm_model, llm_base_url, llm_temperature, llm_max_tokens,"
    " mentions_since_id, auth_state, llm_api_key_enc,"
    " (SELECT t.scope FROM bot_tokens t WHERE t.bot_id = bots.id) AS token_scope"
)

# A bot with what the API derives from its token row and active task types (`xbot.bots.x_connection`).
_VIEW = """
SELECT b.*, t.bot_id IS NOT NULL AS has_tokens, t.refresh_note AS token_note,
       t.expires_at AS token_expires_at, t.scope AS token_scope,
       t.refresh_token_enc IS NOT NULL AS token_refreshable,
       b.llm_api_key_enc IS NOT NULL AS llm_api_key_set,
       ARRAY(SELECT DISTINCT d.task_type FROM bot_task_definitions d
             WHERE d.bot_id = b.id AND d.is_active ORDER BY d.task_type) AS active_task_types
FROM bots b LEFT JOIN bot_tokens t ON t.bot_id = b.id
"""


async def load_bot(db: Executor, bot_id: str) -> BotProfile:
    row = await db.fetchrow(f"SELECT {_PROFILE_COLUMNS} FROM bots WHERE id = $1", bot_id)
    if row is None:
        raise NonRetryableTaskError(f"bot {bot_id} does not exist")
    return BotProfile.model_validate(dict(row))


async def fetch_bot_view(db: Executor, bot_id: str) -> dict[str, Any] | None:
    """Every column of the bot with its token and task facts (`_VIEW`), or None."""
    row = await db.fetchrow(_VIEW + " WHERE b.id = $1", bot_id)
    return dict(row) if row else None


async def list_bot_views(db: Executor, limit: int | None, after: str | None) -> list[dict[str, Any]]:
    """Bots in id order: all of them, or a page of `limit` after the id `after` (keyset paging)."""
    rows = await db.fetch(
        _VIEW + " WHERE ($1::text IS NULL OR b.id > $1) ORDER BY b.id LIMIT $2", after, limit
    )
    return [dict(row) for row in rows]


async def bot_exists(db: Executor, bot_id: str) -> bool:
    return bool(await db.fetchval("SELECT EXISTS (SELECT 1 FROM bots WHERE id = $1)", bot_id))


async def plan_tier(db: Executor, bot_id: str) -> str | None:
    """The bot's X plan tier; None when the bot does not exist."""
    tier: str | None = await db.fetchval("SELECT plan_tier FROM bots WHERE id = $1", bot_id)
    return tier


async def lock_bot(connection: asyncpg.Connection, bot_id: str) -> bool:
    """Lock the bot row until the transaction ends (serializes changes to its definitions);
    False when the bot does not exist."""
    return await connection.fetchval("SELECT true FROM bots WHERE id = $1 FOR UPDATE", bot_id) is not None


async def set_auth_state(db: Executor, bot_id: str, state: str, *, only_if_changed: bool = False) -> None:
    """`ok`, or `needs_reauthorization` (X tasks then fail until new tokens are stored).
    `only_if_changed`: leave `updated_at` alone when the state is already `state`."""
    if only_if_changed:
        await db.execute(
            "UPDATE bots SET auth_state = $2, updated_at = now() WHERE id = $1 AND auth_state <> $2",
            bot_id,
            state,
        )
    else:
        await db.execute("UPDATE bots SET auth_state = $2, updated_at = now() WHERE id = $1", bot_id, state)


async def insert_bot(connection: asyncpg.Connection, values: Mapping[str, Any]) -> bool:
    """Insert a bot with these columns; False when its id is taken."""
    columns = list(values)
    placeholders = ", ".join(f"${index}" for index in range(1, len(columns) + 1))
    try:
        await connection.execute(
            f"INSERT INTO bots ({', '.join(columns)}) VALUES ({placeholders})", *values.values()
        )
    except asyncpg.UniqueViolationError:
        return False
    return True


async def insert_bare_bots(
    db: Executor, ids: list[str], *, name: str | None = None, scheduler_enabled: bool = False
) -> None:
    """Bots with nothing but an id and a name (`name`, or the id), in one statement (bench fleets)."""
    await db.execute(
        "INSERT INTO bots (id, name, scheduler_enabled)"
        " SELECT id, coalesce($2, id), $3 FROM unnest($1::text[]) AS id",
        ids,
        name,
        scheduler_enabled,
    )


async def update_bot_columns(connection: asyncpg.Connection, bot_id: str, changes: Mapping[str, Any]) -> bool:
    """Set these columns (and `updated_at`); False when the bot does not exist."""
    assignments = ", ".join(f"{column} = ${index}" for index, column in enumerate(changes, start=2))
    updated = await connection.fetchval(
        f"UPDATE bots SET {assignments + ', ' if assignments else ''}updated_at = now()"
        " WHERE id = $1 RETURNING true",
        bot_id,
        *changes.values(),
    )
    return bool(updated)


async def delete_bot(db: Executor, bot_id: str) -> bool:
    result: str = await db.execute("DELETE FROM bots WHERE id = $1", bot_id)
    return result.endswith(" 1")


async def set_scheduler_enabled(db: Executor, bot_id: str, enabled: bool) -> None:
    await db.execute(
        "UPDATE bots SET scheduler_enabled = $2, updated_at = now()"
        " WHERE id = $1 AND scheduler_enabled IS DISTINCT FROM $2",
        bot_id,
        enabled,
    )


async def set_schedulers_enabled(db: Executor, wanted: Mapping[str, bool]) -> None:
    """Set `scheduler_enabled` of many bots, in one statement."""
    if not wanted:
        return
    await db.execute(
        "UPDATE bots b SET scheduler_enabled = v.enabled, updated_at = now()"
        " FROM unnest($1::text[], $2::bool[]) AS v(id, enabled)"
        " WHERE b.id = v.id AND b.scheduler_enabled IS DISTINCT FROM v.enabled",
        list(wanted),
        list(wanted.values()),
    )


async def seal_plain_webhook_urls(pool: asyncpg.Pool, seal: Callable[[str], Mapping[str, Any]]) -> int:
    """Replace webhook URLs stored in plain text (rows from before migration 0006) by what `seal`
    makes of them (`discord_webhook_url_enc` and `_hint`); the number of bots changed."""
    async with pool.acquire() as connection, connection.transaction():
        rows = await connection.fetch(
            "SELECT id, discord_webhook_url FROM bots WHERE discord_webhook_url IS NOT NULL FOR UPDATE"
        )
        for row in rows:
            columns = seal(row["discord_webhook_url"])
            await connection.execute(
                "UPDATE bots SET discord_webhook_url = NULL, discord_webhook_url_enc = $2,"
                " discord_webhook_url_hint = $3 WHERE id = $1",
                row["id"],
                columns["discord_webhook_url_enc"],
                columns["discord_webhook_url_hint"],
            )
    return len(rows)


async def set_x_identity(db: Executor, bot_id: str, x_user_id: str, x_username: str | None) -> None:
    await db.execute(
        "UPDATE bots SET x_user_id = $2, x_username = coalesce($3, x_username), updated_at = now()"
        " WHERE id = $1",
        bot_id,
        x_user_id,
        x_username,
    )


async def set_connected_identity(db: Executor, bot_id: str, x_user_id: str, x_username: str | None) -> None:
    """The X account just connected; another account than before restarts the mentions cursor
    (the old one would skip or repeat posts)."""
    await db.execute(
        "UPDATE bots SET mentions_since_id = CASE WHEN x_user_id IS DISTINCT FROM $2 THEN NULL"
        " ELSE mentions_since_id END, x_user_id = $2, x_username = coalesce($3, x_username),"
        " updated_at = now() WHERE id = $1",
        bot_id,
        x_user_id,
        x_username,
    )


async def advance_mentions_cursor(db: Executor, bot_id: str, newest_id: str) -> None:
    """Move `mentions_since_id` forward only: overlapping runs may finish in any order."""
    await db.execute(
        "UPDATE bots SET mentions_since_id = $2, updated_at = now()"
        " WHERE id = $1 AND (mentions_since_id IS NULL OR mentions_since_id::numeric < $2::numeric)",
        bot_id,
        newest_id,
    )


async def banned_user_ids(db: Executor, bot_id: str) -> set[str]:
    """`bot_banned_users` (a child of the bot row with this one statement): whom it never answers."""
    rows = await db.fetch("SELECT x_user_id FROM bot_banned_users WHERE bot_id = $1", bot_id)
    return {row["x_user_id"] for row in rows}


# --- bots read by the X side (authorization, operator accounts) ---


@dataclass(frozen=True)
class AuthRow:
    auth_state: str
    plan_tier: str


async def lock_auth(conn: asyncpg.Connection, bot_id: str) -> AuthRow | None:
    """The bot's authorization, its row locked until the transaction ends; None: no such bot."""
    row = await conn.fetchrow("SELECT auth_state, plan_tier FROM bots WHERE id = $1 FOR UPDATE", bot_id)
    return AuthRow(**dict(row)) if row is not None else None


async def operator_bot_ids(db: asyncpg.Pool | asyncpg.Connection, bot_id: str) -> frozenset[str]:
    """The X user ids of this installation's other bots: never answered by default (bot loops)."""
    rows = await db.fetch("SELECT x_user_id FROM bots WHERE id <> $1 AND x_user_id IS NOT NULL", bot_id)
    return frozenset(row["x_user_id"] for row in rows)
