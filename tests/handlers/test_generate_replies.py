"""generate_replies: drafts through the real openai client, skips, thread context, per-mention failures."""

from __future__ import annotations

import json
from typing import Any

import pytest

from activities.handlers.generate_replies import GenerateRepliesHandler
from activities.handlers.pull_mentions import PullMentionsHandler
from tests.handlers.conftest import World
from xbot.errors import NonRetryableTaskError, TaskError
from xbot.llm.client import LlmUnavailableError
from xbot.x.text import weighted_length


def data(prompt: str) -> dict[str, Any]:
    """The untrusted data of a user message (sent as JSON, never spliced into instructions)."""
    parsed: dict[str, Any] = json.loads(prompt)["untrusted_data"]
    return parsed


def thread(prompt: str) -> list[tuple[str, str]]:
    return [(post["author"], post["text"]) for post in data(prompt)["thread_oldest_first"]]


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
    assert [(r.path, r.query["ids"]) for r in world.x.requests_to("tweets_lookup")] == [("/2/tweets", root)]
    kind = await world.pool.fetchval(
        "SELECT kind FROM pulled_posts WHERE bot_id = $1 AND x_post_id = $2", bot, root
    )
    assert kind == "context"
    prompt = world.llm.prompts()[0]
    assert thread(prompt) == [
        ("carol", "Is it too late to plant tomatoes?"),
        ("bob", "Depends on your climate."),
    ]
    assert data(prompt)["mention"] == {"author": "alice", "text": "@helperbot what do you say?"}
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

    assert result == {"replies_generated": 1, "replies_failed": 0, "context_unavailable": 1}
    assert len(world.x.requests_to("tweets_lookup")) == 1
    assert thread(world.llm.prompts()[0]) == []


async def test_unavailable_parents_are_skipped_per_mention_with_the_reason(world: World) -> None:
    bot = await world.add_bot()
    world.x.add_user("2001", "alice")
    world.x.add_user("2002", "bob")
    world.x.add_user("2666", "gone")
    suspended = world.x.add_post("2666", "a post of a suspended account")
    deleted = world.x.add_post("2002", "soon deleted")
    fine = world.x.add_post("2002", "Tomatoes love the sun.")
    on_suspended = world.x.mention("2001", "@helperbot what about this?", in_reply_to=suspended)
    on_deleted = world.x.mention("2001", "@helperbot and this?", in_reply_to=deleted)
    on_fine = world.x.mention("2001", "@helperbot agree?", in_reply_to=fine)
    await pulled(world, bot)
    await world.pool.execute("DELETE FROM pulled_posts WHERE kind = 'context'")  # all parents to look up
    world.x.suspended.add("2666")
    del world.x.posts[deleted]

    result = await GenerateRepliesHandler(world.deps).run(world.ctx(bot, "generate_replies"))

    # X answered 200 with one post and two errors: every mention is drafted, none fails the task.
    assert result == {"replies_generated": 3, "replies_failed": 0, "context_unavailable": 2}
    lookups = world.x.requests_to("tweets_lookup")
    assert [sorted(r.query["ids"].split(",")) for r in lookups] == [sorted([suspended, deleted, fine])]
    assert world.x.requests_to("tweet_lookup") == []
    drafts = await replies_by_mention(world, bot)
    assert {drafts[m][0] for m in (on_suspended, on_deleted, on_fine)} == {"approved"}
    prompts = {data(p)["mention"]["text"]: p for p in world.llm.prompts()}
    assert thread(prompts["@helperbot agree?"]) == [("bob", "Tomatoes love the sun.")]
    assert thread(prompts["@helperbot what about this?"]) == []
    assert thread(prompts["@helperbot and this?"]) == []
    logged = await world.pool.fetch(
        "SELECT content, context FROM logs WHERE bot_id = $1 AND level = 'warn' ORDER BY id", bot
    )
    reasons = {row["context"]["mention_id"]: row["context"]["reason"] for row in logged}
    assert reasons[on_suspended].startswith("resource-unavailable: User has been suspended")
    assert reasons[on_deleted].startswith("resource-not-found: Could not find tweet")
    assert on_fine not in reasons
    # Nothing is left to do: the next run neither drafts nor looks anything up.
    again = await GenerateRepliesHandler(world.deps).run(world.ctx(bot, "generate_replies"))
    assert again == {"replies_generated": 0, "replies_failed": 0}
    assert len(world.x.requests_to("tweets_lookup")) == 1


async def test_parents_of_a_batch_are_looked_up_together(world: World) -> None:
    bot = await world.add_bot()
    world.x.add_user("2001", "alice")
    world.x.add_user("2002", "bob")
    mentions = []
    for number in range(4):
        root = world.x.add_post("2002", f"root {number}")
        parent = world.x.add_post("2002", f"parent {number}", in_reply_to=root)
        mentions.append(world.x.mention("2001", f"@helperbot number {number}", in_reply_to=parent))
    await pulled(world, bot)
    await world.pool.execute("DELETE FROM pulled_posts WHERE kind = 'context'")

    result = await GenerateRepliesHandler(world.deps).run(world.ctx(bot, "generate_replies", context_depth=3))

    assert result == {"replies_generated": 4, "replies_failed": 0}
    # One request for the four parents; their roots came along as referenced posts.
    assert len(world.x.requests_to("tweets_lookup")) == 1
    assert len(world.x.requests_to("tweets_lookup")[0].query["ids"].split(",")) == 4
    for number, prompt in enumerate(world.llm.prompts()):
        assert [text for _, text in thread(prompt)] == [f"root {number}", f"parent {number}"]
        assert data(prompt)["mention"]["text"] == f"@helperbot number {number}"
