"""pull_mentions: since_id cursor, every page, authors and context stored, never a duplicate row."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from activities.handlers.pull_mentions import PullMentionsHandler
from tests.fakes.fake_x import RateWindow
from tests.handlers.conftest import World
from xbot.errors import RateLimitedError


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

    result = await handler.run(world.ctx(bot, "pull_mentions", max_results=5))

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

    results = await asyncio.gather(*(h.run(world.ctx(bot, "pull_mentions", max_results=5)) for h in handlers))

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
        await handler.run(world.ctx(bot, "pull_mentions", max_results=5))
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
