"""What the X handlers share: a per-bot X client, the bot's own X user id, config reading."""

from __future__ import annotations

from typing import Any

import asyncpg

from activities.handlers.base import HandlerDeps, TaskContext
from xbot.crypto.at_rest import cipher_from_settings
from xbot.errors import NonRetryableTaskError
from xbot.storage import bots
from xbot.storage.bots import BotProfile
from xbot.storage.logs import LogLevel, write_log
from xbot.x import scopes as x_scopes
from xbot.x.client import XClient
from xbot.x.token_store import TokenStore


class XHandlerBase:
    """Builds the token store once per worker; an X client per bot and run."""

    def __init__(self, deps: HandlerDeps, tokens: TokenStore | None = None) -> None:
        self.deps = deps
        self._tokens = tokens
        if tokens is None and (deps.settings.token_encryption_key is not None or deps.settings.is_production):
            # Outside development a worker without TOKEN_ENCRYPTION_KEY refuses to start, here.
            self._tokens = TokenStore(
                deps.pool, cipher_from_settings(deps.settings), deps.http, deps.settings
            )

    @property
    def tokens(self) -> TokenStore:
        if self._tokens is None:
            raise NonRetryableTaskError("missing setting TOKEN_ENCRYPTION_KEY: X tokens cannot be read")
        return self._tokens

    def x_client(self, bot: BotProfile, task_type: str) -> XClient:
        """The bot's X client for one task; a token lacking a scope the task type needs fails it for good
        (retrying cannot add a scope: the account must be connected again with it)."""
        lacking = x_scopes.missing_for_task(bot.token_scope, task_type)
        if lacking:
            raise NonRetryableTaskError(
                f"the X token of bot {bot.id} lacks the scope {' '.join(lacking)} that {task_type} needs:"
                " reconnect the X account from the dashboard (Reconnect) to grant it"
            )
        return XClient(
            http=self.deps.http,
            pool=self.deps.pool,
            settings=self.deps.settings,
            tokens=self.tokens,
            bot_id=bot.id,
            plan_tier=bot.plan_tier,
        )

    async def bot_user_id(self, bot: BotProfile, x: XClient) -> str:
        """The bot's X user id, asked from X (`/2/users/me`) and saved the first time."""
        if bot.x_user_id:
            return bot.x_user_id
        me = await x.get_me()
        user_id = me.get("id")
        if not isinstance(user_id, str):
            raise NonRetryableTaskError("X returned no user id for the bot's token")
        username = me.get("username")
        await bots.set_x_identity(
            self.deps.pool, bot.id, user_id, username if isinstance(username, str) else None
        )
        return user_id

    async def log(
        self, ctx: TaskContext, level: LogLevel, content: str, context: dict[str, Any] | None = None
    ) -> None:
        try:
            await write_log(self.deps.pool, ctx.bot_id, level, content, context, ctx.execution_id or None)
        except asyncpg.ForeignKeyViolationError:  # execution row not written (yet): keep the log line
            await write_log(self.deps.pool, ctx.bot_id, level, content, context, None)


def int_config(ctx: TaskContext, name: str, default: int, low: int, high: int) -> int:
    """A whole-number setting from the task's `config`, refused when malformed or out of range."""
    value = ctx.config.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise NonRetryableTaskError(f"task config `{name}` must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise NonRetryableTaskError(f"task config `{name}` must be between {low} and {high}, got {value}")
    return int(value)


def float_config(ctx: TaskContext, name: str, default: float, low: float, high: float) -> float:
    value = ctx.config.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise NonRetryableTaskError(
            f"task config `{name}` must be a number in [{low}, {high}], got {value!r}"
        )
    return float(value)
