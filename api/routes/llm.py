"""Stored LLM configurations (`/llm-configs`) and prompt templates (`/prompts`), shared by every bot.

Task definitions pick them by id (`config.llm_config_id`, `config.prompt_id`, `config.vision_config`).
A configuration's API key is write-only (`has_api_key`); deleting either while a task definition
references it is refused (409).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response

from api.auth import require_token
from api.deps import COMMON_ERRORS, MAX_BIGINT, NotFound, Pool, State, error_docs
from api.errors import ApiError, ServiceUnavailable
from xbot.storage import llm_configs, prompt_templates
from xbot.storage.llm_configs import LlmConfig, LlmConfigCreate, LlmConfigPatch
from xbot.storage.prompt_templates import PromptTemplate, PromptTemplateCreate, PromptTemplatePatch

router = APIRouter(tags=["llm"], dependencies=[Depends(require_token)], responses=COMMON_ERRORS)

ConfigIdPath = Annotated[int, Path(alias="configId", ge=1, le=MAX_BIGINT)]
PromptIdPath = Annotated[int, Path(alias="promptId", ge=1, le=MAX_BIGINT)]


def _config_error(error: llm_configs.LlmConfigError) -> ApiError:
    if isinstance(error, llm_configs.TokenStorageUnavailable):
        return ServiceUnavailable(str(error))
    return ApiError(409, str(error))


@router.get("/llm-configs", response_model=list[LlmConfig])
async def list_llm_configs(pool: Pool) -> list[LlmConfig]:
    return await llm_configs.list_configs(pool)


@router.post("/llm-configs", status_code=201, response_model=LlmConfig, responses=error_docs(400, 409))
async def create_llm_config(body: LlmConfigCreate, pool: Pool, state: State) -> LlmConfig:
    """The key is stored encrypted and never returned; a base_url the outbound URL policy refuses is a 400."""
    await llm_configs.check_urls(body, allow_private=state.settings.allow_private_urls)
    try:
        return await llm_configs.create_config(pool, body, state.cipher)
    except llm_configs.LlmConfigError as error:
        raise _config_error(error) from None


@router.get("/llm-configs/{configId}", response_model=LlmConfig, responses=error_docs(404))
async def read_llm_config(config_id: ConfigIdPath, pool: Pool) -> LlmConfig:
    config = await llm_configs.get_config(pool, config_id)
    if config is None:
        raise NotFound(f"LLM configuration {config_id} not found")
    return config


@router.patch("/llm-configs/{configId}", response_model=LlmConfig, responses=error_docs(400, 404, 409))
async def patch_llm_config(
    config_id: ConfigIdPath, body: LlmConfigPatch, pool: Pool, state: State
) -> LlmConfig:
    """`api_key: null` removes the key."""
    await llm_configs.check_urls(body, allow_private=state.settings.allow_private_urls)
    try:
        config = await llm_configs.update_config(pool, config_id, body, state.cipher)
    except llm_configs.LlmConfigError as error:
        raise _config_error(error) from None
    if config is None:
        raise NotFound(f"LLM configuration {config_id} not found")
    return config


@router.delete(
    "/llm-configs/{configId}", status_code=204, response_class=Response, responses=error_docs(404, 409)
)
async def delete_llm_config(config_id: ConfigIdPath, pool: Pool) -> Response:
    """Refused (409) while a task definition references it."""
    try:
        deleted = await llm_configs.delete_config(pool, config_id)
    except llm_configs.LlmConfigInUse as error:
        raise ApiError(409, str(error)) from None
    if not deleted:
        raise NotFound(f"LLM configuration {config_id} not found")
    return Response(status_code=204)


@router.get("/prompts", response_model=list[PromptTemplate])
async def list_prompts(pool: Pool) -> list[PromptTemplate]:
    return await prompt_templates.list_templates(pool)


@router.post("/prompts", status_code=201, response_model=PromptTemplate, responses=error_docs(409))
async def create_prompt(body: PromptTemplateCreate, pool: Pool) -> PromptTemplate:
    """An unknown placeholder in `system_text` is refused, naming it (422)."""
    try:
        return await prompt_templates.create_template(pool, body)
    except prompt_templates.PromptTemplateNameTaken as error:
        raise ApiError(409, str(error)) from None


@router.get("/prompts/{promptId}", response_model=PromptTemplate, responses=error_docs(404))
async def read_prompt(prompt_id: PromptIdPath, pool: Pool) -> PromptTemplate:
    template = await prompt_templates.get_template(pool, prompt_id)
    if template is None:
        raise NotFound(f"prompt template {prompt_id} not found")
    return template


@router.patch("/prompts/{promptId}", response_model=PromptTemplate, responses=error_docs(404, 409))
async def patch_prompt(prompt_id: PromptIdPath, body: PromptTemplatePatch, pool: Pool) -> PromptTemplate:
    """A changed `system_text` makes `version` grow by one."""
    try:
        template = await prompt_templates.update_template(pool, prompt_id, body)
    except prompt_templates.PromptTemplateNameTaken as error:
        raise ApiError(409, str(error)) from None
    if template is None:
        raise NotFound(f"prompt template {prompt_id} not found")
    return template


@router.delete(
    "/prompts/{promptId}", status_code=204, response_class=Response, responses=error_docs(404, 409)
)
async def delete_prompt(prompt_id: PromptIdPath, pool: Pool) -> Response:
    """Refused (409) while a task definition references it; drafts keep its id and version."""
    try:
        deleted = await prompt_templates.delete_template(pool, prompt_id)
    except prompt_templates.PromptTemplateInUse as error:
        raise ApiError(409, str(error)) from None
    if not deleted:
        raise NotFound(f"prompt template {prompt_id} not found")
    return Response(status_code=204)
