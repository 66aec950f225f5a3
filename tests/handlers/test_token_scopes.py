"""A task whose type needs a scope the bot's token lacks fails for good, saying which, before calling X."""

from __future__ import annotations

import pytest

from activities.handlers.generate_replies import GenerateRepliesHandler
from activities.handlers.pull_mentions import PullMentionsHandler
from activities.handlers.reply_to_mentions import ReplyToMentionsHandler
from tests.handlers.conftest import World
from xbot.errors import NonRetryableTaskError


async def with_scope(world: World, bot_id: str, scope: str | None) -> None:
    await world.pool.execute("UPDATE bot_tokens SET scope = $2 WHERE bot_id = $1", bot_id, scope)


async def test_posting_without_tweet_write_fails_non_retryably_and_posts_nothing(world: World) -> None:
    bot = await world.add_bot()
    await with_scope(world, bot, "tweet.read users.read offline.access")
    world.x.add_user("2001", "alice")
    world.x.mention("2001", "@helperbot hi")
    await PullMentionsHandler(world.deps).run(world.ctx(bot, "pull_mentions"))  # reading is granted
    await GenerateRepliesHandler(world.deps).run(world.ctx(bot, "generate_replies"))

    with pytest.raises(NonRetryableTaskError) as raised:
        await ReplyToMentionsHandler(world.deps).run(world.ctx(bot, "reply_to_mentions"))

    assert "lacks the scope tweet.write that reply_to_mentions needs" in str(raised.value)
    assert "reconnect" in str(raised.value).lower()
    assert world.x.requests_to("create_post") == []


async def test_reading_mentions_without_users_read_fails_before_calling_x(world: World) -> None:
    bot = await world.add_bot()
    await with_scope(world, bot, "tweet.read tweet.write offline.access")
    with pytest.raises(NonRetryableTaskError, match=r"lacks the scope users\.read that pull_mentions needs"):
        await PullMentionsHandler(world.deps).run(world.ctx(bot, "pull_mentions"))
    assert world.x.requests == []


async def test_a_token_whose_scopes_are_unknown_is_not_refused(world: World) -> None:
    bot = await world.add_bot()  # tokens stored by hand: X's scope never recorded
    await with_scope(world, bot, None)
    world.x.add_user("2001", "alice")
    world.x.mention("2001", "@helperbot hi")
    result = await PullMentionsHandler(world.deps).run(world.ctx(bot, "pull_mentions"))
    assert result["mentions_pulled"] == 1
