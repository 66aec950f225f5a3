"""Prompt templates (`prompt_templates`): a named system text with placeholders, versioned.

A task definition picks one with `config.prompt_id` (replies) or `config.vision_config.
vision_prompt_id` (image descriptions). The text is checked when saved (`xbot.llm.prompt_template`:
unknown placeholders are refused, naming them); every edit of the text makes the version grow, and
each draft records the template id and version that wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from xbot.llm.prompt_template import placeholders

NameText = Annotated[str, Field(min_length=1, max_length=200, pattern=r"\S")]
SystemText = Annotated[str, Field(min_length=1, max_length=20000)]


class PromptTemplateNameTaken(ValueError):
    pass


class PromptTemplateInUse(ValueError):
    """Task definitions still reference it (HTTP 409)."""


def _checked(text: str | None) -> str | None:
    if text is not None:
        placeholders(text)  # TemplateError is a ValueError: pydantic reports it on the field
    return text


class PromptTemplateCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: NameText
    system_text: SystemText = Field(
        description="Placeholders: {persona}, {bot_username}, {author}, {thread}, {mention},"
        " {image_descriptions}; {{ and }} for literal braces"
    )

    @field_validator("system_text")
    @classmethod
    def _known_placeholders(cls, value: str | None) -> str | None:
        return _checked(value)


class PromptTemplatePatch(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: NameText | None = None
    system_text: SystemText | None = None

    @field_validator("system_text")
    @classmethod
    def _known_placeholders(cls, value: str | None) -> str | None:
        return _checked(value)

    @model_validator(mode="after")
    def _not_null(self) -> PromptTemplatePatch:
        for name in self.model_fields_set:
            if getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class PromptTemplate(BaseModel):
    id: int
    name: str
    system_text: str
    version: int = Field(description="Grows by one on every edit of system_text")
    placeholders: list[str] = Field(default_factory=list, description="The placeholders the text uses")
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TemplateRef:
    """The template a run uses: recorded on each draft it writes."""

    id: int
    version: int
    system_text: str


def _template(row: asyncpg.Record) -> PromptTemplate:
    values = dict(row)
    try:
        values["placeholders"] = placeholders(values["system_text"])
    except ValueError:
        values["placeholders"] = []
    return PromptTemplate.model_validate(values)


_SELECT = "SELECT id, name, system_text, version, created_at, updated_at FROM prompt_templates"


async def list_templates(db: asyncpg.Pool | asyncpg.Connection) -> list[PromptTemplate]:
    return [_template(row) for row in await db.fetch(_SELECT + " ORDER BY id")]


async def get_template(db: asyncpg.Pool | asyncpg.Connection, template_id: int) -> PromptTemplate | None:
    row = await db.fetchrow(_SELECT + " WHERE id = $1", template_id)
    return _template(row) if row else None


async def create_template(pool: asyncpg.Pool, data: PromptTemplateCreate) -> PromptTemplate:
    try:
        row = await pool.fetchrow(
            "INSERT INTO prompt_templates (name, system_text) VALUES ($1, $2)"
            " RETURNING id, name, system_text, version, created_at, updated_at",
            data.name,
            data.system_text,
        )
    except asyncpg.UniqueViolationError:
        raise PromptTemplateNameTaken(f"a prompt template named {data.name!r} already exists") from None
    return _template(row)


async def update_template(
    pool: asyncpg.Pool, template_id: int, patch: PromptTemplatePatch
) -> PromptTemplate | None:
    """A new system text makes the version grow (only when the text really changes)."""
    changes: dict[str, Any] = {name: getattr(patch, name) for name in patch.model_fields_set}
    assignments = "".join(f"{column} = ${index}, " for index, column in enumerate(changes, start=2))
    bump = ""
    if "system_text" in changes:
        index = list(changes).index("system_text") + 2
        bump = f"version = version + (system_text IS DISTINCT FROM ${index})::int, "
    try:
        row = await pool.fetchrow(
            f"UPDATE prompt_templates SET {bump}{assignments}updated_at = now() WHERE id = $1"
            " RETURNING id, name, system_text, version, created_at, updated_at",
            template_id,
            *changes.values(),
        )
    except asyncpg.UniqueViolationError:
        raise PromptTemplateNameTaken(f"a prompt template named {patch.name!r} already exists") from None
    return _template(row) if row else None


async def delete_template(pool: asyncpg.Pool, template_id: int) -> bool:
    """Refused (`PromptTemplateInUse`) while a task definition references it. Drafts keep its id."""
    async with pool.acquire() as connection, connection.transaction():
        if not await connection.fetchval(
            "SELECT true FROM prompt_templates WHERE id = $1 FOR UPDATE", template_id
        ):
            return False
        users = await connection.fetch(
            """
            SELECT bot_id, id FROM bot_task_definitions
            WHERE config->>'prompt_id' = $1::text
               OR config->'vision_config'->>'vision_prompt_id' = $1::text
            ORDER BY bot_id, id
            """,
            str(template_id),
        )
        if users:
            names = ", ".join(f"{row['bot_id']}/{row['id']}" for row in users[:10])
            raise PromptTemplateInUse(f"prompt template {template_id} is used by task definitions {names}")
        await connection.execute("DELETE FROM prompt_templates WHERE id = $1", template_id)
    return True


async def existing_ids(db: asyncpg.Pool | asyncpg.Connection, ids: list[int]) -> set[int]:
    rows = await db.fetch("SELECT id FROM prompt_templates WHERE id = ANY($1::bigint[]) FOR SHARE", ids)
    return {row["id"] for row in rows}


async def load_for_run(db: asyncpg.Pool | asyncpg.Connection, template_id: int) -> TemplateRef | None:
    row = await db.fetchrow(
        "SELECT id, version, system_text FROM prompt_templates WHERE id = $1", template_id
    )
    return TemplateRef(**dict(row)) if row else None
