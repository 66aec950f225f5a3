"""Bots: the API's models for creating, changing and showing them, over `xbot.storage.bots`.

OAuth tokens given on create or patch are handed to `xbot.x.tokens.store_tokens` (encrypted at rest)
and never returned: a bot only says whether it has tokens. Its own LLM API key (`llm_api_key`) is
likewise encrypted (`bots.llm_api_key_enc`) and write-only: a bot says `llm_api_key_set`. The Discord webhook URL (its path is a
bearer secret) is stored encrypted with the same key and shown masked.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import asyncpg
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from xbot import url_policy
from xbot.crypto.at_rest import TokenCipher
from xbot.masking import MASK, mask_webhook_url
from xbot.storage import bots as bots_table
from xbot.storage.bots import BotFields
from xbot.x import scopes as x_scopes

BOT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
PlanTier = Literal["free", "basic", "pro", "enterprise"]
HttpUrlText = Annotated[str, Field(min_length=8, max_length=2000, pattern=r"^https?://\S+$")]


def _not_masked(value: str) -> str:
    # The masked form the API shows would replace the secret with asterisks: refuse, keep the stored one.
    if MASK in value:
        raise ValueError(
            "this is the masked form of a webhook URL; send the full URL, or leave the field out"
        )
    return value


WebhookUrlText = Annotated[HttpUrlText, AfterValidator(_not_masked)]


class BotTokensIn(BaseModel):
    """OAuth 2.0 user tokens of the bot's X account. Write-only."""

    # Strict: a JSON string is not a number or a boolean ("5", "true" are refused).
    model_config = ConfigDict(extra="forbid", strict=True)

    access_token: str = Field(min_length=1, max_length=4096)
    refresh_token: str | None = Field(default=None, min_length=1, max_length=4096)
    expires_at: datetime | None = Field(default=None, strict=False)
    scope: str | None = Field(default=None, max_length=1000)

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must include a time zone")
        return value

    def __repr__(self) -> str:  # never print the secrets
        return "BotTokensIn(<redacted>)"


class _BotFields(BaseModel):
    # Strict: a JSON string is not a number or a boolean ("5", "true" are refused).
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=200)
    x_user_id: str | None = Field(default=None, pattern=r"^[0-9]{1,32}$")
    x_username: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_]{1,50}$")
    persona_prompt: str = Field(default="", max_length=20000)
    plan_tier: PlanTier = "basic"
    dry_run: bool = False
    approval_required: bool = False
    discord_webhook_url: WebhookUrlText | None = None
    llm_model: str | None = Field(default=None, min_length=1, max_length=200)
    llm_base_url: HttpUrlText | None = None
    llm_temperature: float | None = Field(default=None, ge=0, le=2)
    llm_max_tokens: int | None = Field(default=None, ge=1, le=100_000)


def _llm_api_key_field() -> Any:
    return Field(
        default=None,
        min_length=1,
        max_length=4096,
        repr=False,  # never printed
        description="API key for the bot's LLM (its llm_base_url, or OPENAI_BASE_URL). Write-only:"
        " stored encrypted, never returned (see llm_api_key_set). Without one, a bot with its own"
        " llm_base_url sends no key; OPENAI_API_KEY only ever goes to OPENAI_BASE_URL.",
        json_schema_extra={"writeOnly": True},
    )


class BotCreate(_BotFields):
    id: str = Field(pattern=BOT_ID_PATTERN, description="Also the Temporal workflow id of its scheduler")
    tokens: BotTokensIn | None = None
    llm_api_key: str | None = _llm_api_key_field()


# Written encrypted elsewhere, never as plain columns.
_SECRETS = {"tokens", "llm_api_key"}
# Columns a PATCH may set to null; the others must keep a value.
_NULLABLE = {"x_user_id", "x_username", "discord_webhook_url", "llm_model", "llm_base_url",
             "llm_temperature", "llm_max_tokens"}  # fmt: skip


class BotPatch(BaseModel):
    """Only the fields present are changed; `null` clears the optional ones."""

    # Strict: a JSON string is not a number or a boolean ("5", "true" are refused).
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = Field(default=None, min_length=1, max_length=200)
    x_user_id: str | None = Field(default=None, pattern=r"^[0-9]{1,32}$")
    x_username: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_]{1,50}$")
    persona_prompt: str | None = Field(default=None, max_length=20000)
    plan_tier: PlanTier | None = None
    dry_run: bool | None = None
    approval_required: bool | None = None
    discord_webhook_url: WebhookUrlText | None = None
    llm_model: str | None = Field(default=None, min_length=1, max_length=200)
    llm_base_url: HttpUrlText | None = None
    llm_temperature: float | None = Field(default=None, ge=0, le=2)
    llm_max_tokens: int | None = Field(default=None, ge=1, le=100_000)
    tokens: BotTokensIn | None = None
    llm_api_key: str | None = _llm_api_key_field()  # null removes the bot's key

    @model_validator(mode="after")
    def _required_stay_set(self) -> BotPatch:
        for name in self.model_fields_set - _NULLABLE - _SECRETS:
            if getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        if "tokens" in self.model_fields_set and self.tokens is None:
            raise ValueError("tokens cannot be null")
        return self

    def column_changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set - _SECRETS}


class XConnection(BaseModel):
    """The health of the bot's X connection (OAuth 2.0 user token); never a token."""

    connected: bool = Field(
        description="Tokens are stored, X has not refused them, and the access token is valid or refreshable"
    )
    needs_reauthorization: bool = Field(description="X refused the tokens: connect the account again")
    expires_in: int | None = Field(
        description="Seconds until the access token expires (0: expired; refreshed on next use when"
        " refreshable); null when unknown or not connected"
    )
    refreshable: bool = Field(description="A refresh token is stored (scope offline.access)")
    scopes: list[str] | None = Field(description="Scopes X granted; null when unknown (tokens given by hand)")
    missing_scopes: list[str] = Field(
        description="Scopes the bot's active task types (and staying connected) need but the token lacks"
    )


class Bot(BotFields):
    """A stored bot as the API returns it (plain types: rows written elsewhere stay readable)."""

    # Its stored settings are `BotFields`; the webhook URL is masked, the rest derived from its tokens.

    discord_webhook_url: str | None = Field(
        description="Masked (`https://discord.com/api/webhooks/123…/****`): the URL is stored encrypted"
    )
    auth_state: Literal["ok", "needs_reauthorization"]
    scheduler_enabled: bool = Field(description="Whether the operator asked the scheduler to run")
    has_tokens: bool
    token_note: str | None = Field(
        default=None,
        description="What went wrong with the last token refresh, e.g. "
        "'refresh answer lost; the old refresh token may be spent' (never a token)",
    )
    llm_api_key_set: bool = Field(default=False, description="Whether the bot has its own LLM API key")
    x_connection: XConnection
    created_at: datetime
    updated_at: datetime


class BotExistsError(Exception):
    pass


class TokenStorageUnavailable(Exception):
    """Tokens were given but no TOKEN_ENCRYPTION_KEY is configured."""


def x_connection(values: dict[str, Any], now: datetime) -> XConnection:
    """The connection health from a bot row joined with its token row (`storage.bots.fetch_bot_view`)."""
    has_tokens = bool(values.get("has_tokens"))
    needs_reauthorization = values.get("auth_state") == "needs_reauthorization"
    refreshable = has_tokens and bool(values.get("token_refreshable"))
    expires_at: datetime | None = values.get("token_expires_at")
    expires_in = max(0, int((expires_at - now).total_seconds())) if has_tokens and expires_at else None
    live = expires_at is None or expires_at > now or refreshable
    scope: str | None = values.get("token_scope") if has_tokens else None
    granted = x_scopes.granted(scope)
    return XConnection(
        connected=has_tokens and not needs_reauthorization and live,
        needs_reauthorization=needs_reauthorization,
        expires_in=expires_in,
        refreshable=refreshable,
        scopes=sorted(granted) if granted is not None else None,
        missing_scopes=x_scopes.missing(scope, values.get("active_task_types") or []) if has_tokens else [],
    )


def _bot(values: dict[str, Any]) -> Bot:
    values["x_connection"] = x_connection(values, datetime.now(UTC))
    plain = values.get("discord_webhook_url")  # an old row not encrypted yet: masked all the same
    values["discord_webhook_url"] = values.get("discord_webhook_url_hint") or (
        mask_webhook_url(plain) if plain else None
    )
    return Bot.model_validate(values)  # extra="ignore": llm_api_key_enc never gets out


async def check_bot_urls(data: BotCreate | BotPatch, *, allow_private: bool) -> None:
    """The outbound URL policy on the URLs the worker will call; `UrlPolicyError` names the field."""
    for name in ("discord_webhook_url", "llm_base_url"):
        url = getattr(data, name)
        if url is not None:
            try:
                await url_policy.check_url(url, allow_private=allow_private)
            except url_policy.UrlPolicyError as error:
                raise url_policy.UrlPolicyError(f"{name}: {error}") from None


def webhook_url_columns(url: str | None, cipher: TokenCipher | None) -> dict[str, Any]:
    """The stored form of a webhook URL: encrypted, with its mask; the plain column stays empty."""
    if url is None:
        return {
            "discord_webhook_url": None,
            "discord_webhook_url_enc": None,
            "discord_webhook_url_hint": None,
        }
    return {
        "discord_webhook_url": None,
        "discord_webhook_url_enc": _require_cipher(cipher).encrypt(url),
        "discord_webhook_url_hint": mask_webhook_url(url),
    }


async def encrypt_plain_webhook_urls(pool: asyncpg.Pool, cipher: TokenCipher) -> int:
    """Encrypt webhook URLs stored in plain text (rows from before migration 0006) and clear them.
    Run by the API and the worker at start; the number of bots changed."""
    return await bots_table.seal_plain_webhook_urls(pool, lambda url: webhook_url_columns(url, cipher))


async def get_bot(pool: asyncpg.Pool, bot_id: str) -> Bot | None:
    values = await bots_table.fetch_bot_view(pool, bot_id)
    return _bot(values) if values else None


async def list_bots(pool: asyncpg.Pool, limit: int | None = None, after: str | None = None) -> list[Bot]:
    """Bots in id order: all of them, or a page of `limit` after the id `after` (keyset paging)."""
    return [_bot(values) for values in await bots_table.list_bot_views(pool, limit, after)]


def _require_cipher(cipher: TokenCipher | None) -> TokenCipher:
    if cipher is None:
        raise TokenStorageUnavailable("token storage is not configured (TOKEN_ENCRYPTION_KEY)")
    return cipher


async def _store_tokens(
    connection: asyncpg.Connection, cipher: TokenCipher, bot_id: str, tokens: BotTokensIn
) -> None:
    from xbot.x.tokens import store_tokens  # also marks the bot authorized again

    await store_tokens(
        connection,
        cipher,
        bot_id,
        tokens.access_token,
        tokens.refresh_token,
        tokens.expires_at,
        scope=tokens.scope,
    )


async def create_bot(pool: asyncpg.Pool, data: BotCreate, cipher: TokenCipher | None) -> Bot:
    token_cipher = _require_cipher(cipher) if data.tokens is not None else None
    values = data.model_dump(exclude=_SECRETS | {"discord_webhook_url"})
    if data.llm_api_key is not None:
        values["llm_api_key_enc"] = _require_cipher(cipher).encrypt(data.llm_api_key)
    if data.discord_webhook_url is not None:
        values.update(webhook_url_columns(data.discord_webhook_url, cipher))
    async with pool.acquire() as connection, connection.transaction():
        if not await bots_table.insert_bot(connection, values):
            raise BotExistsError(f"bot {data.id} already exists")
        if data.tokens is not None and token_cipher is not None:
            await _store_tokens(connection, token_cipher, data.id, data.tokens)
    bot = await get_bot(pool, data.id)
    assert bot is not None
    return bot


async def update_bot(
    pool: asyncpg.Pool, bot_id: str, patch: BotPatch, cipher: TokenCipher | None
) -> Bot | None:
    token_cipher = _require_cipher(cipher) if patch.tokens is not None else None
    changes = patch.column_changes()
    if "llm_api_key" in patch.model_fields_set:
        key = patch.llm_api_key
        changes["llm_api_key_enc"] = None if key is None else _require_cipher(cipher).encrypt(key)
    if "discord_webhook_url" in changes:
        changes.update(webhook_url_columns(changes.pop("discord_webhook_url"), cipher))
    async with pool.acquire() as connection, connection.transaction():
        if not await bots_table.update_bot_columns(connection, bot_id, changes):
            return None
        if patch.tokens is not None and token_cipher is not None:
            await _store_tokens(connection, token_cipher, bot_id, patch.tokens)
    return await get_bot(pool, bot_id)
