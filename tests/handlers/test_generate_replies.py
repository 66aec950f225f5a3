"""generate_replies: drafts through the real openai client, skips, thread context, per-mention failures."""

from __future__ import annotations

import pytest

from activities.handlers.generate_replies import GenerateRepliesHandler
from activities.handlers.pull_mentions import PullMentionsHandler
from tests.handlers.conftest import World
from xbot.errors import NonRetryableTaskError, TaskError
from xbot.llm import LlmUnavailableError
from xbot.post_text import weighted_length


async def pulled(world: World, bot_id: str) -> None:
    await PullMentionsHandler(world.deps).run(world.ctx(bot_id, "pull_mentions"))


async def replies_by_mention(world: World, bot_id: str) -> dict[str, tuple[str, str | None]]:
    rows = await world.pool.fetch(
        "SELECT in_reply_to_x_post_id, status, text FROM post_replies WHERE bot_id = $1", bot_id
    )
    return {row["in_reply_to_x_post_id"]: (row["status"], row["text"]) for row in rows}


async def test_drafts_skip_banned_and_own_posts(world: World) -> None:
    bot = await world.add_bot(persona_prompt="You are Helper, a cheerful assistant.")
    world.x.add_user("2001", "alice", "Alice", description="Loves gardening")
    world.x.add_user("2002", "mallory")
    from_alice = world.x.mention("2001", "@helperbot how do I grow basil?")
    from_mallory = world.x.mention("2002", "@helperbot spam spam")
    from_self = world.x.add_post("1000", "@helperbot note to self")
    await world.pool.execute("INSERT INTO bot_banned_users (bot_id, x_user_id) VALUES ($1, '2002')", bot)
    await pulled(world, bot)

    result = await GenerateRepliesHandler(world.deps).run(world.ctx(bot, "generate_replies"))

    assert result == {"replies_generated": 1, "replies_failed": 0}
    drafts = await replies_by_mention(world, bot)
    assert drafts == {from_alice: ("approved", "Thanks for the mention, @alice!")}
    assert from_mallory not in drafts and from_self not in drafts
    request = world.llm.requests[0]
    assert request["model"] == "fake-model"
    assert "You are Helper, a cheerful assistant." in request["messages"][0]["content"]
    assert "how do I grow basil?" in request["messages"][-1]["content"]
    assert "Loves gardening" in request["messages"][-1]["content"]
    # A second run finds nothing new.
    assert await GenerateRepliesHandler(world.deps).run(world.ctx(bot, "generate_replies")) == {
        "replies_generated": 0,
        "replies_failed": 0,
    }
    assert len(world.llm.requests) == 1


async def test_approval_required_drafts_wait_and_bot_model_is_used(world: World) -> None:
    bot = await world.add_bot(approval_required=True, llm_model="bot-model")
    world.x.add_user("2001", "alice")
    mention = world.x.mention("2001")
    await pulled(world, bot)

    await GenerateRepliesHandler(world.deps).run(world.ctx(bot, "generate_replies"))

    assert (await replies_by_mention(world, bot))[mention][0] == "pending_approval"
    assert world.llm.requests[0]["model"] == "bot-model"


async def test_empty_and_refused_answers_fail_only_their_mention(world: World) -> None:
    bot = await world.add_bot()
    world.x.add_user("2001", "alice")
    empty = world.x.mention("2001", "@helperbot [[empty]]")
    refused = world.x.mention("2001", "@helperbot [[refuse]]")
    fine = world.x.mention("2001", "@helperbot hi")
    long = world.x.mention("2001", "@helperbot [[long]]")
    await pulled(world, bot)

    result = await GenerateRepliesHandler(world.deps).run(world.ctx(bot, "generate_replies"))

    assert result == {"replies_generated": 2, "replies_failed": 2}
    drafts = await replies_by_mention(world, bot)
    assert drafts[empty] == ("failed", None) and drafts[refused] == ("failed", None)
    assert drafts[fine][0] == "approved"
    long_text = drafts[long][1] or ""
    assert drafts[long][0] == "approved" and long_text.endswith("…") and weighted_length(long_text) <= 280
    errors = await world.pool.fetch(
        "SELECT error_message FROM post_replies WHERE bot_id = $1 AND status = 'failed' ORDER BY id", bot
    )
    assert ["empty" in errors[0]["error_message"], "refused" in errors[1]["error_message"]] == [True, True]


async def test_llm_outage_is_retryable_and_records_nothing_for_the_mention(world: World) -> None:
    bot = await world.add_bot()
    world.x.add_user("2001", "alice")
    world.x.mention("2001", "@helperbot [[down]]")
    await pulled(world, bot)

    with pytest.raises(LlmUnavailableError) as raised:
        await GenerateRepliesHandler(world.deps).run(world.ctx(bot, "generate_replies"))

    assert isinstance(raised.value, TaskError) and not isinstance(raised.value, NonRetryableTaskError)
    assert await replies_by_mention(world, bot) == {}


async def test_thread_context_is_fetched_when_missing(world: World) -> None:
    bot = await world.add_bot()
    world.x.add_user("2001", "alice")
    world.x.add_user("2002", "bob")
    world.x.add_user("2003", "carol")
    root = world.x.add_post("2003", "Is it too late to plant tomatoes?")
    parent = world.x.add_post("2002", "Depends on your climate.", in_reply_to=root)
    mention = world.x.mention("2001", "@helperbot what do you say?", in_reply_to=parent)
    await pulled(world, bot)  # stores the mention and, from the expansions, its parent only
    assert len(world.x.requests_to("tweet_lookup")) == 0

    result = await GenerateRepliesHandler(world.deps).run(world.ctx(bot, "generate_replies"))

    assert result["replies_generated"] == 1
    assert [r.path for r in world.x.requests_to("tweet_lookup")] == [f"/2/tweets/{root}"]
    kind = await world.pool.fetchval(
        "SELECT kind FROM pulled_posts WHERE bot_id = $1 AND x_post_id = $2", bot, root
    )
    assert kind == "context"
    prompt = world.llm.prompts()[0]
    assert prompt.index("@carol: Is it too late") < prompt.index("@bob: Depends on your climate.")
    assert prompt.index("@bob: Depends") < prompt.index("what do you say?")
    assert mention in await replies_by_mention(world, bot)


async def test_deleted_parent_ends_the_thread(world: World) -> None:
    bot = await world.add_bot()
    world.x.add_user("2001", "alice")
    parent = world.x.add_post("2001", "soon gone")
    world.x.mention("2001", "@helperbot see above", in_reply_to=parent)
    await pulled(world, bot)
    await world.pool.execute("DELETE FROM pulled_posts WHERE kind = 'context'")
    del world.x.posts[parent]

    result = await GenerateRepliesHandler(world.deps).run(world.ctx(bot, "generate_replies"))

    assert result == {"replies_generated": 1, "replies_failed": 0}
    assert len(world.x.requests_to("tweet_lookup")) == 1
    assert "Conversation so far" not in world.llm.prompts()[0]
