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
from xbot.repositories.replies import approve_reply
from xbot.x_errors import XServerError, XTimeoutError


async def drafted(world: World, bot_id: str, *mentions: tuple[str, str]) -> list[str]:
    """Mentions (author id, text) pulled and drafted; returns their post ids."""
    ids = [world.x.mention(author, text) for author, text in mentions]
    await PullMentionsHandler(world.deps).run(world.ctx(bot_id, "pull_mentions"))
    await GenerateRepliesHandler(world.deps).run(world.ctx(bot_id, "generate_replies"))
    return ids


async def reply_row(world: World, bot_id: str, mention_id: str) -> dict[str, object]:
    row = await world.pool.fetchrow(
        "SELECT id, status, text, posted_x_post_id, post_intent_at, discord_notified_at, error_message"
        " FROM post_replies WHERE bot_id = $1 AND in_reply_to_x_post_id = $2",
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
async def test_duplicate_content_counts_as_already_posted(world: World, style: str) -> None:
    bot = await world.add_bot(x_user_id="1000")
    world.x.add_user("2001", "alice")
    world.x.duplicate_style = style  # type: ignore[assignment]
    (mention,) = await drafted(world, bot, ("2001", "@helperbot hi"))
    # The same reply already went out, unknown to the database (e.g. a restored backup).
    world.x.add_post("1000", "Thanks for the mention, @alice!", in_reply_to=mention)

    result = await run(world, bot)

    assert result["replies_sent"] == 1 and result["replies_failed"] == 0
    row = await reply_row(world, bot, mention)
    assert row["status"] == "posted" and "duplicate" in str(row["error_message"])
    assert len(world.x.replies_by_bot(mention)) == 1


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
