"""A task definition's choice of model and prompt, in the seed's field names.

`config.llm_config_id` (a stored LLM configuration), `config.prompt_id` (a stored prompt template)
and `config.vision_config` = `{vision_llm_config_id, vision_prompt_id?}` (describe a mention's images
first). Ids are integers; a string of digits (as a seed export may hold them) is accepted too.

The shape is checked with the rest of the definition (`check_shape`); that the ids exist is checked
when it is saved (`check_references`) and again by the activity at run time (a row may be gone).
"""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from xbot.storage import llm_configs, prompt_templates

KEYS = ("llm_config_id", "prompt_id", "vision_config")


def _id(value: Any) -> Any:
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    return value


RecordId = Annotated[int, BeforeValidator(_id), Field(ge=1, le=2**63 - 1, strict=True)]


class VisionChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vision_llm_config_id: RecordId
    vision_prompt_id: RecordId | None = None


class LlmChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    llm_config_id: RecordId | None = None
    prompt_id: RecordId | None = None
    vision_config: VisionChoice | None = None


def parse(config: dict[str, Any]) -> LlmChoice:
    """The choice in a definition's config; `ValueError` naming the field when it is malformed."""
    try:
        return LlmChoice.model_validate({key: config[key] for key in KEYS if key in config})
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "missing":
            message = "required (the stored LLM configuration that describes the images)"
        raise ValueError(f"config.{where}: {message}") from None


def check_shape(config: dict[str, Any]) -> None:
    parse(config)


async def check_references(db: asyncpg.Pool | asyncpg.Connection, config: dict[str, Any]) -> None:
    """`ValueError` naming the field whose configuration or template does not exist."""
    choice = parse(config)
    wanted_configs = {"config.llm_config_id": choice.llm_config_id}
    wanted_prompts = {"config.prompt_id": choice.prompt_id}
    if choice.vision_config is not None:
        wanted_configs["config.vision_config.vision_llm_config_id"] = (
            choice.vision_config.vision_llm_config_id
        )
        wanted_prompts["config.vision_config.vision_prompt_id"] = choice.vision_config.vision_prompt_id
    config_ids = [value for value in wanted_configs.values() if value is not None]
    prompt_ids = [value for value in wanted_prompts.values() if value is not None]
    found_configs = await llm_configs.existing_ids(db, config_ids) if config_ids else set()
    found_prompts = await prompt_templates.existing_ids(db, prompt_ids) if prompt_ids else set()
    for where, value in wanted_configs.items():
        if value is not None and value not in found_configs:
            raise ValueError(f"{where}: no LLM configuration {value} (see GET /llm-configs)")
    for where, value in wanted_prompts.items():
        if value is not None and value not in found_prompts:
            raise ValueError(f"{where}: no prompt template {value} (see GET /prompts)")
