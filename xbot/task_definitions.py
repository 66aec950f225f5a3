"""Task definitions: validated models for the API, and the checks around `xbot.storage.task_definitions`.

Validation that needs no database lives in the models (known task type, exactly one schedule, a cron
expression that has a next date, ranges, known rate-limit endpoint). Dependencies are checked when a
definition is saved, under a lock on the bot row: they must be definitions of the same bot and the
graph must stay acyclic, so the scheduler never discovers a cycle at run time. A `webhook`
definition's URL goes through the outbound URL policy (`xbot.url_policy`, which resolves the host), and
its secret-looking headers and query parameters are masked in what the API returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg
from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from workflows import policy
from workflows.models import TaskSchedule
from xbot import url_policy
from xbot.llm import choice as llm_choice
from xbot.masking import mask_config, restore_masked
from xbot.storage import task_definitions as definitions_table
from xbot.storage.bots import lock_bot
from xbot.task_dependencies import dependency_problem
from xbot.task_types import TASK_TYPES
from xbot.x.rate_limits import ENDPOINTS

MAX_DEPENDENCIES = 50


def known_task_types() -> frozenset[str]:
    """Task types the worker has a handler for (xbot.task_types is the catalogue its registry follows)."""
    return TASK_TYPES


class TaskDefinitionError(ValueError):
    """A definition cannot be saved as given; the message says why."""


class TaskDefinitionConflict(Exception):
    """The change would break another definition (e.g. deleting a dependency)."""


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("must include a time zone")
    return value


class TaskDefinitionFields(BaseModel):
    """Every settable field with its default; also used to validate a PATCH merged onto a row."""

    # Strict: a JSON string is not a number or a boolean ("5", "true" are refused).
    model_config = ConfigDict(extra="forbid", strict=True)

    task_type: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    name: str | None = Field(default=None, max_length=200)
    interval_minutes: int | None = Field(default=None, ge=1, le=525_600)
    interval_seconds: int | None = Field(default=None, ge=1, le=31_536_000)
    cron_expression: str | None = Field(default=None, min_length=1, max_length=200)
    jitter_seconds: int = Field(default=0, ge=0, le=86_400)
    priority: int = Field(default=0, ge=-1000, le=1000, description="Higher runs first")
    dependencies: list[int] = Field(default_factory=list, max_length=MAX_DEPENDENCIES)
    max_retries: int = Field(default=3, ge=0, le=100)
    retry_delay_minutes: float = Field(default=1, gt=0, le=1440)
    retry_backoff_coefficient: float = Field(default=2, ge=1, le=10)
    max_retry_delay_minutes: float = Field(default=60, gt=0, le=10_080)
    timeout_seconds: int = Field(default=300, ge=1, le=86_400)
    error_threshold: int = Field(default=5, ge=1, le=1000)
    rate_limit_endpoint: str | None = Field(default=None, description="A key of xbot.x.rate_limits.ENDPOINTS")
    min_rate_limit_remaining: int = Field(default=0, ge=0, le=1_000_000)
    lock_key: str | None = Field(default=None, min_length=1, max_length=200)
    allow_overlap: bool = False
    is_active: bool = True
    next_planned_run_at: datetime | None = Field(default=None, strict=False)
    config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("next_planned_run_at")
    @classmethod
    def _aware_next_run(cls, value: datetime | None) -> datetime | None:
        return _aware(value)

    @field_validator("task_type")
    @classmethod
    def _known_type(cls, value: str, info: ValidationInfo) -> str:
        # A stored definition keeps its type on PATCH even if that handler was since removed.
        if info.context and info.context.get("stored_task_type") == value:
            return value
        known = known_task_types()
        if value not in known:
            raise ValueError(f"unknown task type {value!r} (known: {', '.join(sorted(known))})")
        return value

    @field_validator("cron_expression")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        problem = policy.cron_problem(value)
        if problem is not None:
            raise ValueError(problem)
        try:
            croniter(value, datetime.now(UTC)).get_next(datetime)
        except Exception:
            raise ValueError(f"cron expression {value!r} never fires") from None
        return value

    @field_validator("rate_limit_endpoint")
    @classmethod
    def _known_endpoint(cls, value: str | None) -> str | None:
        if value is not None and value not in ENDPOINTS:
            raise ValueError(f"unknown rate-limit endpoint {value!r} (known: {', '.join(sorted(ENDPOINTS))})")
        return value

    @field_validator("dependencies")
    @classmethod
    def _unique_dependencies(cls, value: list[int]) -> list[int]:
        if any(item < 1 for item in value):
            raise ValueError("dependencies are task definition ids (positive integers)")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _consistent(self) -> TaskDefinitionFields:
        schedules = [self.interval_minutes, self.interval_seconds, self.cron_expression]
        if sum(item is not None for item in schedules) != 1:
            raise ValueError("give exactly one of interval_minutes, interval_seconds, cron_expression")
        if self.max_retry_delay_minutes < self.retry_delay_minutes:
            raise ValueError("max_retry_delay_minutes must be at least retry_delay_minutes")
        if self.task_type == "webhook":
            _check_webhook_config(self.config)
        llm_choice.check_shape(self.config)  # llm_config_id, prompt_id, vision_config (seed names)
        return self


def _check_webhook_config(config: dict[str, Any]) -> None:
    """The shape the webhook handler needs, refused when saved rather than at its first run."""
    if not isinstance(config.get("url"), str):
        raise ValueError("config.url: a webhook task needs the URL to POST to")
    headers = config.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(value, str) for value in headers.values()):
        raise ValueError("config.headers: must map header names to strings")


async def check_task_urls(fields: TaskDefinitionFields, *, allow_private: bool) -> None:
    """The outbound URL policy on the URL the worker will call (`UrlPolicyError`)."""
    if fields.task_type == "webhook":
        try:
            await url_policy.check_url(str(fields.config["url"]), allow_private=allow_private)
        except url_policy.UrlPolicyError as error:
            raise url_policy.UrlPolicyError(f"config.url: {error}") from None


class TaskDefinitionCreate(TaskDefinitionFields):
    pass


class TaskDefinitionPatch(BaseModel):
    """Only the fields present change; the merged definition is validated as a whole."""

    # Strict: a JSON string is not a number or a boolean ("5", "true" are refused).
    model_config = ConfigDict(extra="forbid", strict=True)

    task_type: str | None = None
    name: str | None = None
    interval_minutes: int | None = None
    interval_seconds: int | None = None
    cron_expression: str | None = None
    jitter_seconds: int | None = None
    priority: int | None = None
    dependencies: list[int] | None = None
    max_retries: int | None = None
    retry_delay_minutes: float | None = None
    retry_backoff_coefficient: float | None = None
    max_retry_delay_minutes: float | None = None
    timeout_seconds: int | None = None
    error_threshold: int | None = None
    rate_limit_endpoint: str | None = None
    min_rate_limit_remaining: int | None = None
    lock_key: str | None = None
    allow_overlap: bool | None = None
    is_active: bool | None = None
    next_planned_run_at: datetime | None = Field(default=None, strict=False)
    config: dict[str, Any] | None = None

    def changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class TaskDefinition(TaskSchedule):
    """A stored definition, as the API returns it (plain types: rows written by SQL stay readable)."""

    # The scheduling fields are the workflow's (`TaskSchedule`); every field is in every response.

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    bot_id: str
    interval_minutes: int | None
    is_active: bool
    config: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @field_validator("config")
    @classmethod
    def _masked(cls, value: dict[str, Any]) -> dict[str, Any]:
        # What the API shows: a PATCH that sends the masked values back keeps the stored secrets.
        return mask_config(value)


_FIELDS = tuple(TaskDefinitionFields.model_fields)


def _definition(row: Mapping[str, Any]) -> TaskDefinition:
    return TaskDefinition.model_validate(row)


def _validate_merged(values: Mapping[str, Any], stored_task_type: str | None = None) -> TaskDefinitionFields:
    try:
        return TaskDefinitionFields.model_validate(
            {name: values[name] for name in _FIELDS if name in values},
            context={"stored_task_type": stored_task_type},
        )
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise TaskDefinitionError(f"{where}: {message}" if where else message) from None


async def _check_dependencies(
    connection: asyncpg.Connection, bot_id: str, task_id: int | None, dependencies: list[int]
) -> None:
    problem = await dependency_problem(connection, bot_id, task_id, dependencies)
    if problem is not None:
        raise TaskDefinitionError(problem)


async def _check_llm_choice(connection: asyncpg.Connection, config: dict[str, Any]) -> None:
    try:
        await llm_choice.check_references(connection, config)
    except ValueError as error:
        raise TaskDefinitionError(str(error)) from None


class BotNotFound(Exception):
    pass


async def list_task_definitions(pool: asyncpg.Pool, bot_id: str) -> list[TaskDefinition]:
    return [_definition(row) for row in await definitions_table.list_definitions(pool, bot_id)]


async def get_task_definition(pool: asyncpg.Pool, bot_id: str, task_id: int) -> TaskDefinition | None:
    row = await definitions_table.get_definition(pool, bot_id, task_id)
    return _definition(row) if row else None


async def create_task_definition(
    pool: asyncpg.Pool, bot_id: str, data: TaskDefinitionCreate, *, allow_private_urls: bool
) -> TaskDefinition:
    await check_task_urls(data, allow_private=allow_private_urls)
    values = data.model_dump()
    async with pool.acquire() as connection, connection.transaction():
        if not await lock_bot(connection, bot_id):
            raise BotNotFound(bot_id)
        await _check_dependencies(connection, bot_id, None, values["dependencies"])
        await _check_llm_choice(connection, values["config"])
        row = await definitions_table.insert_definition(connection, bot_id, values)
    return _definition(row)


async def update_task_definition(
    pool: asyncpg.Pool, bot_id: str, task_id: int, patch: TaskDefinitionPatch, *, allow_private_urls: bool
) -> TaskDefinition | None:
    changes = patch.changes()
    async with pool.acquire() as connection, connection.transaction():
        if not await lock_bot(connection, bot_id):
            raise BotNotFound(bot_id)
        row = await definitions_table.get_definition(connection, bot_id, task_id)
        if row is None:
            return None
        if isinstance(changes.get("config"), dict):
            changes["config"] = restore_masked(changes["config"], row["config"])
        merged = _validate_merged({**row, **changes}, stored_task_type=row["task_type"])
        if {"task_type", "config"} & changes.keys():
            # Under the bot's lock, so the URL checked is the URL saved (the lookup is bounded).
            await check_task_urls(merged, allow_private=allow_private_urls)
        values = merged.model_dump(include=set(changes))
        if "dependencies" in values:
            await _check_dependencies(connection, bot_id, task_id, values["dependencies"])
        if "config" in values:
            await _check_llm_choice(connection, values["config"])
        if values:
            row = await definitions_table.update_definition(connection, bot_id, task_id, row, values)
    return _definition(row) if row else None


async def delete_task_definition(pool: asyncpg.Pool, bot_id: str, task_id: int) -> bool:
    async with pool.acquire() as connection, connection.transaction():
        if not await lock_bot(connection, bot_id):
            raise BotNotFound(bot_id)
        dependents = await definitions_table.dependents(connection, bot_id, task_id)
        if dependents:
            ids = ", ".join(str(item) for item in dependents)
            raise TaskDefinitionConflict(f"task definitions {ids} depend on task definition {task_id}")
        return await definitions_table.delete_definition(connection, bot_id, task_id)


async def set_paused(pool: asyncpg.Pool, bot_id: str, task_id: int, paused: bool) -> TaskDefinition | None:
    row = await definitions_table.set_paused(pool, bot_id, task_id, paused)
    return _definition(row) if row else None
