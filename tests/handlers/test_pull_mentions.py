"""pull_mentions: since_id cursor, every page, authors and context stored, never a duplicate row; the
backlog policy: a new bot starts from now, old mentions are skipped, pagination keeps a reserve."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from activities.handlers.pull_mentions import PullMentionsHandler
from tests.fakes.fake_x import RateWindow
from tests.handlers.conftest import World
from xbot.errors import NonRetryableTaskError, RateLimitedError
from xbot.storage import posts


async def mention_rows(world: World, bot_id: str) -> list[str]:
    rows = await world.pool.fetch(
        "SELECT x_post_id FROM pulled_posts WHERE bot_id = $1 AND kind = 'mention' ORDER BY x_post_id", bot_id
    )
    return [row["x_post_id"] for row in rows]


async def test_all_pages_then_only_new_mentions(world: World) -> None:
    bot = await world.add_bot()
    world.x.add_user("2001", "alice", "Alice")
    first = [world.x.mention("2001", f"@helperbot question {i}") for i in range(12)]
    handler = PullMentionsHandler(world.deps)

    result = await handler.run(world.ctx(bot, "pull_mentions", max_results=5, backfill=True))

    assert result == {"mentions_pulled": 12}
    assert await mention_rows(world, bot) == sorted(first)
    assert len(world.x.requests_to("mentions")) == 3  # 5 + 5 + 2
    row = await world.pool.fetchrow(
        "SELECT x_user_id, x_username, mentions_since_id FROM bots WHERE id = $1", bot
    )
    assert (row["x_user_id"], row["x_username"]) == ("1000", "helperbot")
    assert row["mentions_since_id"] == max(first, key=int)
    author = await world.pool.fetchrow("SELECT username, fetched_at FROM x_users WHERE x_user_id = '2001'")
    assert author["username"] == "alice" and author["fetched_at"] is None

    assert await handler.run(world.ctx(bot, "pull_mentions")) == {"mentions_pulled": 0}
    assert world.x.requests_to("mentions")[-1].query["since_id"] == max(first, key=int)

    later = [world.x.mention("2001", "@helperbot again"), world.x.mention("2001", "@helperbot more")]
    assert await handler.run(world.ctx(bot, "pull_mentions")) == {"mentions_pulled": 2}
    assert await mention_rows(world, bot) == sorted(first + later)


async def test_overlapping_runs_never_duplicate(world: World) -> None:
    bot = await world.add_bot()
    world.x.add_user("2001", "alice")
    ids = [world.x.mention("2001", f"@helperbot hi {i}") for i in range(9)]
    handlers = [PullMentionsHandler(world.deps) for _ in range(3)]

    config = {"max_results": 5, "backfill": True}
    results = await asyncio.gather(*(h.run(world.ctx(bot, "pull_mentions", **config)) for h in handlers))

    assert sum(r["mentions_pulled"] for r in results) == 9
    assert await mention_rows(world, bot) == sorted(ids)


async def test_sweep_cut_short_by_rate_limit_resumes_below_what_it_stored(world: World) -> None:
    bot = await world.add_bot()
    world.x.add_user("2001", "alice")
    ids = [world.x.mention("2001", f"@helperbot hi {i}") for i in range(12)]
    reset = datetime.now(UTC) + timedelta(minutes=15)
    world.x.rate["mentions"] = RateWindow(limit=10, remaining=2, reset_at=reset)
    handler = PullMentionsHandler(world.deps)

    with pytest.raises(RateLimitedError):
        await handler.run(world.ctx(bot, "pull_mentions", max_results=5, backfill=True))
    assert len(await mention_rows(world, bot)) == 10
    assert await world.pool.fetchval("SELECT mentions_since_id FROM bots WHERE id = $1", bot) is None

    # The window resets: X's and ours.
    world.x.rate.pop("mentions")
    await world.pool.execute("UPDATE rate_limit_tracking SET reset_at = now() - interval '1 second'")
    new = world.x.mention("2001", "@helperbot arrived meanwhile")
    result = await handler.run(world.ctx(bot, "pull_mentions", max_results=5))

    assert result == {"mentions_pulled": 3}
    assert await mention_rows(world, bot) == sorted([*ids, new])
    gap_request = world.x.requests_to("mentions")[2]
    assert gap_request.query["until_id"] == sorted(ids, key=int)[2]
    assert await world.pool.fetchval("SELECT mentions_since_id FROM bots WHERE id = $1", bot) == new


async def test_parents_from_expansions_are_stored_as_context(world: World) -> None:
    bot = await world.add_bot()
    world.x.add_user("2001", "alice")
    world.x.add_user("2002", "bob")
    parent = world.x.add_post("2002", "what do you all think?")
    reply = world.x.mention("2001", "@helperbot what do you think?", in_reply_to=parent)

    assert await PullMentionsHandler(world.deps).run(world.ctx(bot, "pull_mentions")) == {
        "mentions_pulled": 1
    }

    rows = await world.pool.fetch(
        "SELECT x_post_id, kind, in_reply_to_post_id FROM pulled_posts WHERE bot_id = $1 ORDER BY x_post_id",
        bot,
    )
    assert [(r["x_post_id"], r["kind"], r["in_reply_to_post_id"]) for r in rows] == [
        (parent, "context", None),
        (reply, "mention", parent),
    ]
    assert await world.pool.fetchval("SELECT username FROM x_users WHERE x_user_id = '2002'") == "bob"


async def test_mentions_are_scoped_to_the_bot(world: World) -> None:
    one = await world.add_bot("bot-1", x_user_id="1000")
    other = await world.add_bot("bot-2", x_user_id="1000")
    world.x.add_user("2001", "alice")
    world.x.mention("2001")

    await PullMentionsHandler(world.deps).run(world.ctx(one, "pull_mentions"))

    assert len(await mention_rows(world, one)) == 1
    assert await mention_rows(world, other) == []


async def cursor_of(world: World, bot_id: str) -> str | None:
    value: str | None = await world.pool.fetchval("SELECT mentions_since_id FROM bots WHERE id = $1", bot_id)
    return value


async def skipped_rows(world: World, bot_id: str) -> dict[str, str]:
    rows = await world.pool.fetch(
        "SELECT x_post_id, skipped_reason FROM pulled_posts WHERE bot_id = $1 AND skipped_reason IS NOT NULL",
        bot_id,
    )
    return {row["x_post_id"]: row["skipped_reason"] for row in rows}


async def test_new_bot_starts_from_the_newest_page(world: World) -> None:
    bot = await world.add_bot()
    world.x.add_user("2001", "alice")
    ids = [world.x.mention("2001", f"@helperbot hi {i}") for i in range(12)]
    handler = PullMentionsHandler(world.deps)

    result = await handler.run(world.ctx(bot, "pull_mentions", max_results=5))

    assert result["mentions_pulled"] == 5
    assert "backfill" in result["backlog"]
    assert len(world.x.requests_to("mentions")) == 1
    newest_five = sorted(ids, key=int)[-5:]
    assert await mention_rows(world, bot) == sorted(newest_five)
    assert await cursor_of(world, bot) == newest_five[-1]
    # The next run goes on from there: only what is newer.
    later = world.x.mention("2001", "@helperbot later")
    assert await handler.run(world.ctx(bot, "pull_mentions", max_results=5)) == {"mentions_pulled": 1}
    assert world.x.requests_to("mentions")[-1].query["since_id"] == newest_five[-1]
    assert await cursor_of(world, bot) == later


async def test_backfill_hours_reads_back_that_far_and_records_what_it_skipped(world: World) -> None:
    bot = await world.add_bot()
    world.x.add_user("2001", "alice")
    now = datetime.now(UTC)
    old = [world.x.mention("2001", f"@helperbot old {i}", at=now - timedelta(hours=5)) for i in range(6)]
    recent = [world.x.mention("2001", f"@helperbot new {i}", at=now - timedelta(hours=1)) for i in range(7)]

    result = await PullMentionsHandler(world.deps).run(
        world.ctx(bot, "pull_mentions", max_results=5, backfill_hours=2)
    )

    assert result["mentions_pulled"] == 7
    # Pages of 5, newest first: the second page reached the 5-hour-old mentions and ended the sweep.
    assert len(world.x.requests_to("mentions")) == 2
    assert result["mentions_skipped"] == 3 and "backfill_hours (2 h)" in result["skipped_reason"]
    skipped = await skipped_rows(world, bot)
    assert set(skipped) == set(sorted(old, key=int)[-3:])
    assert await cursor_of(world, bot) == max(recent, key=int)
    needing_reply = await posts.mentions_needing_reply(world.pool, bot, "1000", 100)
    assert sorted(p.x_post_id for p in needing_reply) == sorted(recent)


async def test_after_a_long_pause_old_mentions_are_skipped_not_answered(world: World) -> None:
    world.x.add_user("2001", "alice")
    now = datetime.now(UTC)
    seen = world.x.mention("2001", "@helperbot before the pause", at=now - timedelta(days=90))
    bot = await world.add_bot(mentions_since_id=seen)
    backlog = [
        world.x.mention("2001", f"@helperbot during {i}", at=now - timedelta(days=60 - i)) for i in range(8)
    ]
    today = [
        world.x.mention("2001", f"@helperbot today {i}", at=now - timedelta(minutes=30)) for i in range(3)
    ]

    result = await PullMentionsHandler(world.deps).run(world.ctx(bot, "pull_mentions", max_results=5))

    assert result["mentions_pulled"] == 3
    assert result["mentions_skipped"] == 2  # the rest of the first page; older pages are never read
    assert "max_mention_age_hours (24 h)" in result["skipped_reason"]
    assert len(world.x.requests_to("mentions")) == 1
    assert set(await skipped_rows(world, bot)) == set(sorted(backlog, key=int)[-2:])
    assert await cursor_of(world, bot) == max(today, key=int)
    needing_reply = await posts.mentions_needing_reply(world.pool, bot, "1000", 100)
    assert sorted(p.x_post_id for p in needing_reply) == sorted(today)
    logs = await world.pool.fetch("SELECT content FROM logs WHERE bot_id = $1", bot)
    assert any("skipped 2 mentions older than max_mention_age_hours" in row["content"] for row in logs)


@pytest.mark.parametrize("reserve_from", ["config", "definition"])
async def test_pagination_keeps_the_reserve_succeeds_and_resumes_next_run(
    world: World, reserve_from: str
) -> None:
    bot = await world.add_bot()
    world.x.add_user("2001", "alice")
    ids = [world.x.mention("2001", f"@helperbot hi {i}") for i in range(18)]
    reset = datetime.now(UTC) + timedelta(minutes=15)
    world.x.rate["mentions"] = RateWindow(limit=10, remaining=5, reset_at=reset)
    config: dict[str, object] = {"max_results": 5, "backfill": True}
    task_id = 1
    if reserve_from == "config":
        config["rate_limit_reserve"] = 2
    else:
        task_id = await world.pool.fetchval(
            "INSERT INTO bot_task_definitions (bot_id, task_type, interval_minutes, rate_limit_endpoint,"
            " min_rate_limit_remaining) VALUES ($1, 'pull_mentions', 5, 'mentions', 2) RETURNING id",
            bot,
        )
    handler = PullMentionsHandler(world.deps)
    ctx = replace(world.ctx(bot, "pull_mentions", **config), task_id=task_id)

    result = await handler.run(ctx)

    # 5 left: pages 1, 2 and 3 leave 4, 3 and 2; a fourth would eat into the reserve of 2.
    assert result["mentions_pulled"] == 15
    assert "kept the reserve of 2 mentions requests (2 left in the bot 15m window" in result["stopped"]
    assert len(world.x.requests_to("mentions")) == 3
    assert world.x.rate["mentions"].remaining == 2
    assert await cursor_of(world, bot) is None  # the sweep is not complete yet

    # The window resets (X's and the ledger's): the next run resumes below what it stored.
    world.x.rate.pop("mentions")
    await world.pool.execute("UPDATE rate_limit_tracking SET reset_at = now() - interval '1 second'")
    result = await handler.run(ctx)

    assert result == {"mentions_pulled": 3}
    assert world.x.requests_to("mentions")[3].query["until_id"] == sorted(ids, key=int)[3]
    assert await mention_rows(world, bot) == sorted(ids)
    assert await cursor_of(world, bot) == max(ids, key=int)


async def test_malformed_backlog_config_is_not_retryable(world: World) -> None:
    bot = await world.add_bot()
    for config in ({"backfill": "yes"}, {"max_mention_age_hours": -1}, {"rate_limit_reserve": 1.5}):
        with pytest.raises(NonRetryableTaskError):
            await PullMentionsHandler(world.deps).run(world.ctx(bot, "pull_mentions", **config))
