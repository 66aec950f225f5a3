"""generate_replies against LLM failures and per-bot keys, through the real `openai` client.

Configuration errors fail the task for good and leave the mentions to draft later; transient ones
are retryable; a reply cut off at the token limit is asked for again, then cut at a sentence; a bot's
own base URL gets the bot's own key or none, never OPENAI_API_KEY.
"""

from __future__ import annotations

import pytest

from activities.handlers.generate_replies import GenerateRepliesHandler
from activities.handlers.pull_mentions import PullMentionsHandler
from tests.fakes.fake_llm import API_KEY, FakeLlm
from tests.handlers.conftest import World
from tests.support.servers import serve
from xbot.errors import NonRetryableTaskError, TaskError
from xbot.llm.client import SHORTER_REPLY_CHARS, LlmConfigurationError, LlmUnavailableError, ReplyGenerator
from xbot.storage.posts import mentions_needing_reply


async def one_mention(world: World, **bot_columns: object) -> tuple[str, str]:
    """A bot with one pulled mention from alice; returns (bot id, mention id)."""
    bot = await world.add_bot(**bot_columns)
    world.x.add_user("2001", "alice")
    mention = world.x.mention("2001", "@helperbot hi")
    await PullMentionsHandler(world.deps).run(world.ctx(bot, "pull_mentions"))
    return bot, mention


async def generate(world: World, bot: str, generator: ReplyGenerator | None = None) -> dict[str, object]:
    handler = GenerateRepliesHandler(world.deps, generator=generator)
    return await handler.run(world.ctx(bot, "generate_replies"))


async def untouched(world: World, bot: str) -> bool:
    """No reply row was written and the mention still waits for a draft."""
    rows = await world.pool.fetchval("SELECT count(*) FROM post_replies WHERE bot_id = $1", bot)
    return rows == 0 and len(await mentions_needing_reply(world.pool, bot, None, 10)) == 1


@pytest.mark.parametrize(
    ("status", "message", "code", "says"),
    [
        (404, "The model `gpt-nope` does not exist or you do not have access to it.", "model_not_found",
         "does not know model 'fake-model'"),
        (400, "Unsupported parameter: 'max_tokens' is not supported with this model.", "unsupported_parameter",
         "Unsupported parameter: 'max_tokens'"),
        (422, "temperature must be at most 1", None, "llm_temperature"),
        (401, f"Incorrect API key provided: {API_KEY[:6]}***", "invalid_api_key", "refused OPENAI_API_KEY"),
        (403, "Project does not have access to this model", None, "refused OPENAI_API_KEY (HTTP 403)"),
        (429, "You exceeded your current quota.", "insufficient_quota", "no quota left"),
    ],
)  # fmt: skip
async def test_configuration_errors_fail_the_task_for_good_and_leave_the_mention(
    world: World, status: int, message: str, code: str | None, says: str
) -> None:
    bot, _ = await one_mention(world)
    for _ in range(2):  # the client itself retries a 429 once
        world.llm.queue_error(status, message, code=code)

    with pytest.raises(NonRetryableTaskError) as raised:
        await generate(world, bot)

    assert isinstance(raised.value, LlmConfigurationError)
    assert says in str(raised.value)
    assert API_KEY not in str(raised.value) and API_KEY[:6] not in str(raised.value)
    assert await untouched(world, bot)
    world.llm.canned.clear()  # fixed: the next run drafts the mention
    assert (await generate(world, bot))["replies_generated"] == 1


@pytest.mark.parametrize(
    ("status", "code"), [(500, None), (503, None), (502, None), (429, "rate_limit_exceeded"), (409, None)]
)
async def test_transient_errors_are_retryable_and_leave_the_mention(
    world: World, status: int, code: str | None
) -> None:
    bot, _ = await one_mention(world)
    for _ in range(2):  # the client's own retry fails too
        world.llm.queue_error(status, "try again later", type_="server_error", code=code)

    with pytest.raises(LlmUnavailableError) as raised:
        await generate(world, bot)

    assert isinstance(raised.value, TaskError) and not isinstance(raised.value, NonRetryableTaskError)
    assert await untouched(world, bot)


async def test_timeouts_and_unreachable_servers_are_retryable(world: World) -> None:
    bot, _ = await one_mention(world)
    for _ in range(2):
        world.llm.queue_reply("too late", delay=2.0)
    with pytest.raises(LlmUnavailableError, match=r"no answer within 0\.5s"):
        await generate(world, bot, ReplyGenerator(world.settings, timeout_seconds=0.5))
    assert await untouched(world, bot)

    await world.pool.execute("UPDATE bots SET llm_base_url = 'http://127.0.0.1:9/v1' WHERE id = $1", bot)
    with pytest.raises(LlmUnavailableError, match=r"127\.0\.0\.1 cannot be reached"):
        await generate(world, bot)
    assert await untouched(world, bot)


async def test_a_reply_cut_off_at_the_token_limit_is_asked_for_again_shorter(world: World) -> None:
    bot, mention = await one_mention(world, llm_max_tokens=60)
    world.llm.queue_reply("Thanks for asking! Here is a long story that never", finish_reason="length")

    assert (await generate(world, bot))["replies_generated"] == 1

    assert [call.max_tokens for call in world.llm.calls] == [60, 60]
    first, second = (call.body["messages"][0]["content"] for call in world.llm.calls)
    assert "At most 280 characters" in first
    assert f"At most {SHORTER_REPLY_CHARS} characters" in second and "short sentences" in second
    text = await world.pool.fetchval(
        "SELECT text FROM post_replies WHERE in_reply_to_x_post_id = $1", mention
    )
    assert text == "Thanks for the mention, @alice!"


async def test_a_reply_cut_off_twice_ends_at_its_last_whole_sentence(world: World) -> None:
    bot, mention = await one_mention(world)
    world.llm.queue_reply("Hello there! This one is long and", finish_reason="length")
    world.llm.queue_reply("Thanks for the mention! Gardening is fun. And then", finish_reason="length")

    assert (await generate(world, bot))["replies_generated"] == 1

    text = await world.pool.fetchval(
        "SELECT text FROM post_replies WHERE in_reply_to_x_post_id = $1", mention
    )
    assert text == "Thanks for the mention! Gardening is fun."


async def test_no_text_before_the_token_limit_is_a_configuration_error(world: World) -> None:
    bot, _ = await one_mention(world, llm_max_tokens=5)
    world.llm.queue_reply(None, finish_reason="length")
    world.llm.queue_reply("", finish_reason="length")

    with pytest.raises(LlmConfigurationError, match="llm_max_tokens=5"):
        await generate(world, bot)

    assert await untouched(world, bot)


async def test_own_base_url_gets_the_bots_own_key(world: World) -> None:
    own = FakeLlm(accepted_keys={"sk-bot-own-key"})
    async with serve(own.app()) as own_url:
        bot, _ = await one_mention(
            world,
            llm_base_url=f"{own_url}/v1",
            llm_model="own-model",
            llm_api_key="sk-bot-own-key",
        )

        assert (await generate(world, bot))["replies_generated"] == 1

    assert [(c.authorization, c.model) for c in own.calls] == [("Bearer sk-bot-own-key", "own-model")]
    assert world.llm.calls == []  # the global server never heard of this bot


async def test_own_base_url_without_a_key_sends_none_not_the_global_one(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The openai client would pick this up by itself if it were ever given no key.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-global-from-the-environment")
    own = FakeLlm(accepted_keys=set())
    async with serve(own.app()) as own_url:
        bot, _ = await one_mention(world, llm_base_url=f"{own_url}/v1")

        assert (await generate(world, bot))["replies_generated"] == 1

        assert [call.authorization for call in own.calls] == [None]
        # A server that wants a key says so, and the operator is told which key is missing.
        own.accepted_keys = {"sk-needed"}
        await world.pool.execute("DELETE FROM post_replies WHERE bot_id = $1", bot)
        with pytest.raises(LlmConfigurationError) as raised:
            await generate(world, bot)

    assert "no API key (the bot has its own llm_base_url and no llm_api_key)" in str(raised.value)
    assert "llm_api_key" in str(raised.value)
    assert await untouched(world, bot)
    assert world.llm.calls == []


async def test_a_bots_key_without_its_own_base_url_goes_to_the_global_server(world: World) -> None:
    world.llm.accepted_keys = {API_KEY, "sk-bot-billing"}
    bot, _ = await one_mention(world, llm_api_key="sk-bot-billing")

    assert (await generate(world, bot))["replies_generated"] == 1

    assert [call.authorization for call in world.llm.calls] == ["Bearer sk-bot-billing"]


async def test_no_key_for_openai_itself_fails_only_when_there_is_something_to_draft(world: World) -> None:
    unset = world.settings.model_copy(update={"openai_base_url": None, "openai_api_key": None})
    bot = await world.add_bot()
    assert await generate(world, bot, ReplyGenerator(unset)) == {"replies_generated": 0, "replies_failed": 0}
    world.x.add_user("2001", "alice")
    world.x.mention("2001", "@helperbot hi")
    await PullMentionsHandler(world.deps).run(world.ctx(bot, "pull_mentions"))

    with pytest.raises(LlmConfigurationError, match="missing setting OPENAI_API_KEY"):
        await generate(world, bot, ReplyGenerator(unset))

    assert await untouched(world, bot)
