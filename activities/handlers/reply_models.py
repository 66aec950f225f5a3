"""Which model and prompt write a bot's replies, and what a mention's images show.

Resolution, inside the activity (keys are decrypted here and never pass through a workflow's inputs
or history): the definition's `config.llm_config_id` (a stored configuration with its own key), else
the bot's `llm_*` settings and `llm_api_key`, else the global OPENAI_* settings. `config.prompt_id`
picks a stored template; without one the bot's persona is the prompt.

Vision (`config.vision_config`): a mention's photos (`url`) and videos' preview images
(`preview_image_url`) go to the vision configuration as `image_url` content parts (the vision model
fetches them; each URL passes the outbound URL policy first) with its prompt. The description is
stored with the post, and so is a failure's reason: a retried task never pays for it twice. Alt
texts are always passed on. A mention whose images cannot be described is answered from its text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from xbot import url_policy
from xbot.crypto.at_rest import TokenCipherError, cipher_from_settings
from xbot.errors import NonRetryableTaskError
from xbot.llm import choice as llm_choice
from xbot.llm.client import LlmOptions, ReplyGenerator
from xbot.replies import Provenance
from xbot.settings import Settings
from xbot.storage import llm_configs, prompt_templates
from xbot.storage.bots import BotProfile
from xbot.storage.prompt_templates import TemplateRef

MAX_IMAGES = 4  # X allows four images a post


@dataclass(frozen=True)
class VisionSetup:
    options: LlmOptions
    template: TemplateRef | None


@dataclass(frozen=True)
class RunModels:
    options: LlmOptions  # the reply model
    template: TemplateRef | None
    vision: VisionSetup | None

    @property
    def provenance(self) -> Provenance:
        return Provenance(
            self.template.id if self.template else None,
            self.template.version if self.template else None,
            self.options.llm_config_id,
        )


def _decrypt(settings: Settings, ciphertext: bytes | None, what: str) -> str | None:
    if ciphertext is None:
        return None
    try:
        return cipher_from_settings(settings).decrypt(ciphertext)
    except TokenCipherError as error:  # its message names the setting, never the key
        raise NonRetryableTaskError(f"{what} cannot be read: {error}") from None


async def _stored_options(
    pool: asyncpg.Pool, settings: Settings, generator: ReplyGenerator, config_id: int, where: str
) -> LlmOptions:
    config = await llm_configs.load_for_run(pool, config_id)
    if config is None:
        raise NonRetryableTaskError(f"{where}: LLM configuration {config_id} no longer exists")
    key = _decrypt(settings, config.api_key_enc, f"the API key of LLM configuration {config_id}")
    return generator.options_for_config(config, key)


async def _template(pool: asyncpg.Pool, template_id: int | None, where: str) -> TemplateRef | None:
    if template_id is None:
        return None
    template = await prompt_templates.load_for_run(pool, template_id)
    if template is None:
        raise NonRetryableTaskError(f"{where}: prompt template {template_id} no longer exists")
    return template


async def resolve(
    pool: asyncpg.Pool, settings: Settings, generator: ReplyGenerator, bot: BotProfile, config: dict[str, Any]
) -> RunModels:
    try:
        choice = llm_choice.parse(config)
    except ValueError as error:
        raise NonRetryableTaskError(str(error)) from None
    if choice.llm_config_id is not None:
        options = await _stored_options(
            pool, settings, generator, choice.llm_config_id, "config.llm_config_id"
        )
    else:
        options = generator.options_for(
            bot.llm_model,
            bot.llm_base_url,
            bot.llm_temperature,
            bot.llm_max_tokens,
            api_key=_decrypt(settings, bot.llm_api_key_enc, "the bot's llm_api_key"),
        )
    template = await _template(pool, choice.prompt_id, "config.prompt_id")
    vision: VisionSetup | None = None
    if choice.vision_config is not None:
        where = "config.vision_config"
        vision = VisionSetup(
            await _stored_options(
                pool, settings, generator, choice.vision_config.vision_llm_config_id, where
            ),
            await _template(pool, choice.vision_config.vision_prompt_id, where),
        )
    return RunModels(options, template, vision)


def image_urls(media: list[dict[str, Any]] | None) -> list[str]:
    """What the vision model looks at: a photo's `url`, a video's or GIF's `preview_image_url`."""
    urls: list[str] = []
    for item in media or []:
        url = item.get("url") if item.get("type") == "photo" else item.get("preview_image_url")
        if isinstance(url, str) and url and url not in urls:
            urls.append(url)
    return urls[:MAX_IMAGES]


def alt_texts(media: list[dict[str, Any]] | None) -> list[str]:
    return [
        f"alt text of image {number}: {item['alt_text']}"
        for number, item in enumerate(media or [], start=1)
        if isinstance(item.get("alt_text"), str) and item["alt_text"].strip()
    ]


async def allowed_urls(urls: list[str], *, allow_private: bool) -> tuple[list[str], list[str]]:
    """The image URLs the outbound URL policy lets the vision model fetch, and why others were refused."""
    kept: list[str] = []
    refused: list[str] = []
    for number, url in enumerate(urls, start=1):
        try:
            await url_policy.check_url(url, allow_private=allow_private)
        except url_policy.UrlPolicyError as error:
            refused.append(f"image {number}: {error}")
        else:
            kept.append(url)
    return kept, refused
