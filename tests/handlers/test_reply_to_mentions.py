"""reply_to_mentions: approved drafts posted exactly once, dry run, approval, Discord best effort."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from activities.handlers.generate_replies import GenerateRepliesHandler
from activities.handlers.pull_mentions import PullMentionsHandler
from activities.handlers.reply_to_mentions import ReplyToMentionsHandler
from tests.fakes.fake_x import RateWindow
from tests.handlers.conftest import World
from xbot.errors import RateLimitedError
from xbot.reply_policy import ReplyPolicy
from xbot.storage.replies import approve_reply
from xbot.storage.reply_policies import save_policy
from xbot.x.errors import XServerError, XTimeoutError


async def drafted(world: World, bot_id: str, *mentions: tuple[str, str]) -> list[str]:
    """Mentions (author id, text) pulled and drafted; returns their post ids."""
    ids = [world.x.mention(author, text) for author, text in mentions]
    await PullMentionsHandler(world.deps).run(world.ctx(bot_id, "pull_mentions"))
    await GenerateRepliesHandler(world.deps).run(world.ctx(bot_id, "generate_replies"))
    return ids


async def reply_row(world: World, bot_id: str, mention_id: str) -> dict[str, object]:
    row = await world.pool.fetchrow(
        "SELECT id, status, text, posted_x_post_id, post_intent_at, discord_notified_at, error_message,"
        " failure_kind FROM post_replies WHERE bot_id = $1 AND in_reply_to_x_post_id = $2",
        bot_id,
        mention_id,
    )
    assert row is not None
    return dict(row)


async def run(world: World, bot_id: str) -> dict[str, object]:
    return await ReplyToMentionsHandler(world.deps).run(world.ctx(bot_id, "reply_to_mentions"))


async def test_posts_each_approved_draft_once_and_notifies_discord(world: World) -> None:
    bot = await world.add_bot(discord_webhook_url=world.discord_url)
    world.x.add_user("2001", "alice")
    world.x.add_user("2002", "bob")
    first, second = await drafted(world, bot, ("2001", "@helperbot hi"), ("2002", "@helperbot hey"))

    result = await run(world, bot)

    assert result["replies_sent"] == 2 and result["replies_failed"] == 0
    for mention, author in ((first, "alice"), (second, "bob")):
        row = await reply_row(world, bot, mention)
        assert row["status"] == "posted" and row["discord_notified_at"] is not None
        posted = world.x.replies_by_bot(mention)
        assert [p["id"] for p in posted] == [row["posted_x_post_id"]]
        assert posted[0]["text"] == f"Thanks for the mention, @{author}!"
    assert len(world.discord.messages) == 2
    assert "Thanks for the mention, @alice!" in world.discord.messages[0]["content"]
    assert world.discord.messages[0]["allowed_mentions"] == {"parse": []}

    assert (await run(world, bot))["replies_sent"] == 0
    assert world.x.posts_per_mention == {first: 1, second: 1}
    assert len(world.discord.messages) == 2


async def test_approval_required_posts_only_approved_drafts(world: World) -> None:
    bot = await world.add_bot(approval_required=True)
    world.x.add_user("2001", "alice")
    (mention,) = await drafted(world, bot, ("2001", "@helperbot hi"))

    assert (await run(world, bot))["replies_sent"] == 0
    assert world.x.requests_to("create_post") == []

    await approve_reply(world.pool, bot, int((await reply_row(world, bot, mention))["id"]))  # type: ignore[call-overload]
    assert (await run(world, bot))["replies_sent"] == 1
    assert world.x.posts_per_mention == {mention: 1}


async def test_dry_run_posts_nothing_and_logs_what_it_would_post(world: World) -> None:
    bot = await world.add_bot(dry_run=True, discord_webhook_url=world.discord_url)
    world.x.add_user("2001", "alice")
    (mention,) = await drafted(world, bot, ("2001", "@helperbot hi"))

    result = await run(world, bot)

    assert result == {"replies_sent": 0, "replies_failed": 0, "replies_dry_run": 1}
    assert world.x.requests_to("create_post") == [] and world.discord.messages == []
    row = await reply_row(world, bot, mention)
    assert row["status"] == "dry_run" and row["text"] == "Thanks for the mention, @alice!"
    logged = await world.pool.fetch("SELECT content, context FROM logs WHERE bot_id = $1", bot)
    dry = [r for r in logged if r["content"].startswith("dry run: would reply")]
    assert len(dry) == 1 and dry[0]["context"]["reply_id"] == row["id"]
    assert all("Thanks for the mention" not in f"{r['content']}{r['context']}" for r in logged)


@pytest.mark.parametrize("fault", ["accept_then_hang", "accept_then_500"])
async def test_post_that_went_through_unseen_is_found_not_repeated(world: World, fault: str) -> None:
    bot = await world.add_bot(x_user_id="1000", discord_webhook_url=world.discord_url)
    world.x.add_user("2001", "alice")
    (mention,) = await drafted(world, bot, ("2001", "@helperbot hi"))
    world.x.inject("create_post", fault)  # type: ignore[arg-type]

    with pytest.raises((XTimeoutError, XServerError)):
        await run(world, bot)
    row = await reply_row(world, bot, mention)
    assert row["status"] == "posting" and row["post_intent_at"] is not None
    assert world.x.posts_per_mention == {mention: 1}  # X has it; we do not know yet

    result = await run(world, bot)

    assert result["replies_sent"] == 1 and result["replies_recovered"] == 1
    assert world.x.posts_per_mention == {mention: 1}
    assert len(world.x.requests_to("create_post")) == 1
    assert len(world.x.requests_to("user_tweets")) == 1
    row = await reply_row(world, bot, mention)
    assert row["status"] == "posted"
    assert row["posted_x_post_id"] == world.x.replies_by_bot(mention)[0]["id"]
    assert len(world.discord.messages) == 1


async def test_post_that_never_went_out_is_posted_after_the_search(world: World) -> None:
    bot = await world.add_bot(x_user_id="1000")
    world.x.add_user("2001", "alice")
    (mention,) = await drafted(world, bot, ("2001", "@helperbot hi"))
    world.x.inject("create_post", "hang")  # X never created it

    with pytest.raises(XTimeoutError):
        await run(world, bot)
    assert world.x.posts_per_mention == {}

    result = await run(world, bot)

    assert result["replies_sent"] == 1 and result["replies_recovered"] == 0
    assert world.x.posts_per_mention == {mention: 1}
    assert (await reply_row(world, bot, mention))["status"] == "posted"


@pytest.mark.parametrize("style", ["v2", "code187"])
async def test_fresh_reply_refused_as_duplicate_fails_and_is_redrafted(world: World, style: str) -> None:
    bot = await world.add_bot(x_user_id="1000", discord_webhook_url=world.discord_url)
    world.x.add_user("2001", "alice")
    world.x.duplicate_style = style  # type: ignore[assignment]
    # Two mentions by alice: the LLM drafts the same text for both.
    first, second = await drafted(world, bot, ("2001", "@helperbot hi"), ("2001", "@helperbot hello"))
    assert (await reply_row(world, bot, first))["text"] == (await reply_row(world, bot, second))["text"]

    result = await run(world, bot)

    assert result["replies_sent"] == 1 and result["replies_failed"] == 1
    refused = await reply_row(world, bot, second)
    assert refused["status"] == "failed" and refused["posted_x_post_id"] is None
    assert refused["failure_kind"] == "duplicate_content"
    assert "duplicate" in str(refused["error_message"]).lower()
    assert refused["discord_notified_at"] is None and len(world.discord.messages) == 1
    assert world.x.posts_per_mention == {first: 1}

    # The next generate_replies run drafts it again, asking the LLM for different words.
    drafted_again = await GenerateRepliesHandler(world.deps).run(world.ctx(bot, "generate_replies"))

    assert drafted_again == {"replies_generated": 1, "replies_failed": 0, "replies_redrafted": 1}
    hint = world.llm.requests[-1]["messages"]
    assert "refused as a duplicate" in hint[0]["content"]
    assert "Thanks for the mention, @alice!" in hint[-1]["content"]  # the refused text, to avoid
    redraft = await reply_row(world, bot, second)
    assert redraft["status"] == "approved" and redraft["failure_kind"] is None
    assert redraft["error_message"] is None and redraft["text"] != refused["text"]

    assert (await run(world, bot))["replies_sent"] == 1
    assert world.x.posts_per_mention == {first: 1, second: 1}
    assert (await reply_row(world, bot, second))["status"] == "posted"
    assert len(world.discord.messages) == 2


async def test_redrafts_stop_after_the_limit(world: World) -> None:
    bot = await world.add_bot(x_user_id="1000")
    world.x.add_user("2001", "alice")
    first, second = await drafted(world, bot, ("2001", "@helperbot hi"), ("2001", "@helperbot hello"))
    await run(world, bot)
    for _ in range(3):  # the LLM keeps answering with the text X already has
        world.llm.queue_reply("Thanks for the mention, @alice!")
        await GenerateRepliesHandler(world.deps).run(world.ctx(bot, "generate_replies"))
        await run(world, bot)

    row = await reply_row(world, bot, second)
    assert row["status"] == "failed" and row["failure_kind"] == "duplicate_content"
    assert await world.pool.fetchval("SELECT redraft_count FROM post_replies WHERE id = $1", row["id"]) == 2
    assert len(world.llm.canned) == 1  # the third queued answer was never asked for
    assert world.x.posts_per_mention == {first: 1}


async def test_duplicate_after_an_earlier_attempt_counts_once_the_timeline_shows_it(world: World) -> None:
    bot = await world.add_bot(x_user_id="1000", discord_webhook_url=world.discord_url)
    world.x.add_user("2001", "alice")
    (mention,) = await drafted(world, bot, ("2001", "@helperbot hi"))
    world.x.inject("create_post", "accept_then_500")  # X has it; we do not know
    with pytest.raises(XServerError):
        await run(world, bot)
    # The timeline lags: the first search misses the post, so the reply is sent again and refused.
    world.x.inject("user_tweets", "empty")

    result = await run(world, bot)

    assert result["replies_sent"] == 1 and result["replies_failed"] == 0
    assert len(world.x.requests_to("create_post")) == 2 and len(world.x.requests_to("user_tweets")) == 2
    row = await reply_row(world, bot, mention)
    assert row["status"] == "posted"
    assert row["posted_x_post_id"] == world.x.replies_by_bot(mention)[0]["id"]
    assert "duplicate" in str(row["error_message"])
    assert world.x.posts_per_mention == {mention: 1} and len(world.discord.messages) == 1


async def test_duplicate_after_an_earlier_attempt_not_on_the_timeline_fails(world: World) -> None:
    bot = await world.add_bot(x_user_id="1000")
    world.x.add_user("2001", "alice")
    first, second = await drafted(world, bot, ("2001", "@helperbot hi"), ("2001", "@helperbot hello"))
    handler = ReplyToMentionsHandler(world.deps)
    await handler.run(world.ctx(bot, "reply_to_mentions", max_replies_per_run=1))  # the first only
    world.x.inject("create_post", "hang")  # the second never reaches X
    with pytest.raises(XTimeoutError):
        await run(world, bot)
    assert (await reply_row(world, bot, second))["status"] == "posting"

    result = await run(world, bot)

    # Sent again after a search that found nothing, refused as a copy of the first reply, and not
    # on the timeline after a second look: not this mention's post.
    assert result["replies_sent"] == 0 and result["replies_failed"] == 1
    assert len(world.x.requests_to("user_tweets")) == 2
    row = await reply_row(world, bot, second)
    assert row["status"] == "failed" and row["failure_kind"] == "duplicate_content"
    assert world.x.posts_per_mention == {first: 1}


async def test_rate_limited_post_goes_back_to_approved_until_the_reset(world: World) -> None:
    bot = await world.add_bot(x_user_id="1000")
    world.x.add_user("2001", "alice")
    (mention,) = await drafted(world, bot, ("2001", "@helperbot hi"))
    reset = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=3)
    world.x.rate["create_post"] = RateWindow(limit=100, remaining=0, reset_at=reset)

    with pytest.raises(RateLimitedError) as raised:
        await run(world, bot)

    assert raised.value.reset_at == reset
    row = await reply_row(world, bot, mention)
    assert row["status"] == "approved" and row["post_intent_at"] is None
    tracked = await world.pool.fetchrow(
        "SELECT remaining, reset_at FROM rate_limit_tracking WHERE bot_id = $1 AND endpoint = 'create_post'",
        bot,
    )
    assert (tracked["remaining"], tracked["reset_at"]) == (0, reset)


async def test_refused_reply_fails_alone(world: World) -> None:
    bot = await world.add_bot(x_user_id="1000")
    world.x.add_user("2001", "alice")
    world.x.add_user("2002", "bob")
    first, second = await drafted(world, bot, ("2001", "@helperbot hi"), ("2002", "@helperbot yo"))
    del world.x.posts[first]  # deleted before the bot got to it

    result = await run(world, bot)

    assert result["replies_sent"] == 1 and result["replies_failed"] == 1
    row = await reply_row(world, bot, first)
    assert row["status"] == "failed" and "deleted or not visible" in str(row["error_message"])
    assert world.x.posts_per_mention == {second: 1}


async def test_discord_failure_never_fails_or_repeats_the_reply(world: World) -> None:
    bot = await world.add_bot(x_user_id="1000", discord_webhook_url=world.discord_url)
    world.x.add_user("2001", "alice")
    (mention,) = await drafted(world, bot, ("2001", "@helperbot hi"))
    world.discord.fail_next = 1

    result = await run(world, bot)

    assert result["replies_sent"] == 1
    row = await reply_row(world, bot, mention)
    assert row["status"] == "posted" and row["discord_notified_at"] is None
    warning = await world.pool.fetchval(
        "SELECT content FROM logs WHERE bot_id = $1 AND level = 'warn' AND content LIKE 'Discord%'", bot
    )
    assert warning is not None
    assert (await run(world, bot))["replies_sent"] == 0
    # The notification waits in the outbox for its retry (test_notifications_outbox.py); the reply
    # is never posted again.
    assert world.x.posts_per_mention == {mention: 1} and world.discord.messages == []


async def test_replies_are_scoped_to_the_bot(world: World) -> None:
    one = await world.add_bot("bot-1", x_user_id="1000")
    other = await world.add_bot("bot-2", x_user_id="1000")
    world.x.add_user("2001", "alice")
    (mention,) = await drafted(world, other, ("2001", "@helperbot hi"))

    assert (await run(world, one))["replies_sent"] == 0
    assert world.x.posts_per_mention == {}
    assert (await run(world, other))["replies_sent"] == 1
    assert world.x.posts_per_mention == {mention: 1}


async def test_a_post_valid_as_x_counts_it_goes_out_whole_however_many_code_points(world: World) -> None:
    bot = await world.add_bot(x_user_id="1000")
    world.x.add_user("2001", "alice")
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # 7 code points, counts 2
    text = f"Welcome, @alice! {family * 60} https://example.com/{'a' * 200}"  # 23 + 140 + 18: valid
    assert len(text) > 600
    world.llm.queue_reply(text)
    # Links are refused by the output filter unless the reply policy allows them.
    await save_policy(world.pool, bot, ReplyPolicy(allow_links=True))
    (mention,) = await drafted(world, bot, ("2001", "@helperbot hi"))

    assert (await run(world, bot))["replies_sent"] == 1

    assert (await reply_row(world, bot, mention))["text"] == text
    assert world.x.replies_by_bot(mention)[0]["text"] == text
