"""Stored LLM configurations (`llm_configs`): an OpenAI-compatible endpoint, a model, sampling, a key.

A task definition picks one with `config.llm_config_id` (replies) or `config.vision_config.
vision_llm_config_id` (image descriptions). The API key is encrypted with TOKEN_ENCRYPTION_KEY like
the bots' `llm_api_key` and write-only: the API says `has_api_key`, never the key. Only the worker's
activity decrypts it (`load_for_run`), so it never travels through a workflow's inputs or history.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, model_validator

from xbot import url_policy
from xbot.crypto.at_rest import TokenCipher

HttpUrlText = Annotated[str, Field(min_length=8, max_length=2000, pattern=r"^https?://\S+$")]
NameText = Annotated[str, Field(min_length=1, max_length=200, pattern=r"\S")]


class LlmConfigError(ValueError):
    """Cannot be saved as given (HTTP 400/409 in the API)."""


class LlmConfigNameTaken(LlmConfigError):
    pass


class LlmConfigInUse(LlmConfigError):
    """Task definitions still reference it (HTTP 409)."""


class TokenStorageUnavailable(LlmConfigError):
    """A key was given but no TOKEN_ENCRYPTION_KEY is configured."""


def _api_key_field() -> Any:
    return Field(
        default=None,
        min_length=1,
        max_length=4096,
        repr=False,
        description="API key for this endpoint. Write-only: stored encrypted, never returned (see"
        " has_api_key). Without one, a configuration with its own base_url sends no key, and one"
        " without a base_url uses OPENAI_API_KEY.",
        json_schema_extra={"writeOnly": True},
    )


class LlmConfigCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: NameText
    base_url: HttpUrlText | None = Field(default=None, description="Null: OPENAI_BASE_URL")
    model: str = Field(min_length=1, max_length=200)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=100_000)
    api_key: str | None = _api_key_field()

    def __repr__(self) -> str:  # never the key
        return f"LlmConfigCreate(name={self.name!r}, model={self.model!r})"


class LlmConfigPatch(BaseModel):
    """Only the fields present change; `null` clears base_url, temperature, max_tokens, api_key."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: NameText | None = None
    base_url: HttpUrlText | None = None
    model: str | None = Field(default=None, min_length=1, max_length=200)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=100_000)
    api_key: str | None = _api_key_field()

    @model_validator(mode="after")
    def _required_stay_set(self) -> LlmConfigPatch:
        for name in ("name", "model"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self

    def __repr__(self) -> str:
        return f"LlmConfigPatch(fields={sorted(self.model_fields_set)})"


class LlmConfigFields(BaseModel):
    """The columns every view of a stored configuration has (never the key)."""

    id: int
    name: str
    base_url: str | None
    model: str
    temperature: float | None
    max_tokens: int | None


class LlmConfig(LlmConfigFields):
    """As the API returns it: never the key."""

    model_config = ConfigDict(extra="ignore")

    has_api_key: bool
    created_at: datetime
    updated_at: datetime


class StoredLlmConfig(LlmConfigFields):
    """What the worker needs to call the model; the key stays encrypted until the call."""

    model_config = ConfigDict(frozen=True)

    api_key_enc: bytes | None = Field(default=None, repr=False)


_SELECT = (
    "SELECT id, name, base_url, model, temperature, max_tokens, api_key_enc IS NOT NULL AS has_api_key,"
    " created_at, updated_at FROM llm_configs"
)


async def check_urls(data: LlmConfigCreate | LlmConfigPatch, *, allow_private: bool) -> None:
    """The outbound URL policy on base_url, like a bot's llm_base_url (`UrlPolicyError`)."""
    if data.base_url is not None:
        try:
            await url_policy.check_url(data.base_url, allow_private=allow_private)
        except url_policy.UrlPolicyError as error:
            raise url_policy.UrlPolicyError(f"base_url: {error}") from None


def _encrypt(key: str, cipher: TokenCipher | None) -> bytes:
    if cipher is None:
        raise TokenStorageUnavailable("key storage is not configured (TOKEN_ENCRYPTION_KEY)")
    return cipher.encrypt(key)


async def list_configs(db: asyncpg.Pool | asyncpg.Connection) -> list[LlmConfig]:
    return [LlmConfig.model_validate(dict(row)) for row in await db.fetch(_SELECT + " ORDER BY id")]


async def get_config(db: asyncpg.Pool | asyncpg.Connection, config_id: int) -> LlmConfig | None:
    row = await db.fetchrow(_SELECT + " WHERE id = $1", config_id)
    return LlmConfig.model_validate(dict(row)) if row else None


async def create_config(pool: asyncpg.Pool, data: LlmConfigCreate, cipher: TokenCipher | None) -> LlmConfig:
    key = _encrypt(data.api_key, cipher) if data.api_key is not None else None
    try:
        row = await pool.fetchrow(
            "INSERT INTO llm_configs (name, base_url, model, temperature, max_tokens, api_key_enc)"
            " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            data.name,
            data.base_url,
            data.model,
            data.temperature,
            data.max_tokens,
            key,
        )
    except asyncpg.UniqueViolationError:
        raise LlmConfigNameTaken(f"an LLM configuration named {data.name!r} already exists") from None
    created = await get_config(pool, row["id"])
    assert created is not None
    return created


async def update_config(
    pool: asyncpg.Pool, config_id: int, patch: LlmConfigPatch, cipher: TokenCipher | None
) -> LlmConfig | None:
    changes: dict[str, Any] = {
        name: getattr(patch, name) for name in patch.model_fields_set if name != "api_key"
    }
    if "api_key" in patch.model_fields_set:
        changes["api_key_enc"] = None if patch.api_key is None else _encrypt(patch.api_key, cipher)
    assignments = "".join(f"{column} = ${index}, " for index, column in enumerate(changes, start=2))
    try:
        updated = await pool.fetchval(
            f"UPDATE llm_configs SET {assignments}updated_at = now() WHERE id = $1 RETURNING id",
            config_id,
            *changes.values(),
        )
    except asyncpg.UniqueViolationError:
        raise LlmConfigNameTaken(f"an LLM configuration named {patch.name!r} already exists") from None
    return await get_config(pool, config_id) if updated else None


async def delete_config(pool: asyncpg.Pool, config_id: int) -> bool:
    """Refused (`LlmConfigInUse`) while a task definition references it."""
    async with pool.acquire() as connection, connection.transaction():
        if not await connection.fetchval("SELECT true FROM llm_configs WHERE id = $1 FOR UPDATE", config_id):
            return False
        users = await connection.fetch(
            """
            SELECT bot_id, id FROM bot_task_definitions
            WHERE config->>'llm_config_id' = $1::text
               OR config->'vision_config'->>'vision_llm_config_id' = $1::text
            ORDER BY bot_id, id
            """,
            str(config_id),
        )
        if users:
            names = ", ".join(f"{row['bot_id']}/{row['id']}" for row in users[:10])
            raise LlmConfigInUse(f"LLM configuration {config_id} is used by task definitions {names}")
        await connection.execute("DELETE FROM llm_configs WHERE id = $1", config_id)
    return True


async def existing_ids(db: asyncpg.Pool | asyncpg.Connection, ids: list[int]) -> set[int]:
    rows = await db.fetch("SELECT id FROM llm_configs WHERE id = ANY($1::bigint[]) FOR SHARE", ids)
    return {row["id"] for row in rows}


async def load_for_run(db: asyncpg.Pool | asyncpg.Connection, config_id: int) -> StoredLlmConfig | None:
    row = await db.fetchrow(
        "SELECT id, name, base_url, model, temperature, max_tokens, api_key_enc FROM llm_configs WHERE id = $1",
        config_id,
    )
    return StoredLlmConfig.model_validate(dict(row)) if row else None
