"""A bot's own llm_base_url is checked by the outbound URL policy again when the worker calls it."""

from __future__ import annotations

import pytest

from xbot.llm.client import LlmConfigurationError, MentionPrompt, ReplyGenerator
from xbot.settings import load_settings

PROMPT = MentionPrompt(
    persona="a bot",
    bot_username="bot",
    author_username="someone",
    author_name=None,
    author_description=None,
    mention_text="hi",
    thread=[],
)


async def test_a_private_bot_base_url_is_refused_at_request_time_in_production() -> None:
    generator = ReplyGenerator(load_settings(XBOT_ENV="production", XBOT_ALLOW_PRIVATE_URLS=False))
    options = generator.options_for("m", "http://127.0.0.1:9/v1", None, None, api_key="k")
    with pytest.raises(LlmConfigurationError, match="outbound URL policy"):
        await generator.generate(PROMPT, options)
    await generator.close()


async def test_the_global_base_url_is_the_operator_s_own_and_not_checked() -> None:
    generator = ReplyGenerator(
        load_settings(
            XBOT_ENV="production", XBOT_ALLOW_PRIVATE_URLS=False, OPENAI_BASE_URL="http://127.0.0.1:9/v1"
        )
    )
    options = generator.options_for("m", None, None, None)
    assert not options.own_base_url
    await generator.close()
