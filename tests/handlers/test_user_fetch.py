"""user_fetch: stale or never-fetched authors of the bot's posts, 100 ids per request."""

from __future__ import annotations

from activities.handlers.user_fetch import UserFetchHandler
from tests.handlers.conftest import World


async def add_authored_post(world: World, bot_id: str, author_id: str, post_id: str) -> None:
    await world.pool.execute(
        "INSERT INTO pulled_posts (bot_id, x_post_id, author_x_user_id, text) VALUES ($1, $2, $3, 'hi')",
        bot_id,
        post_id,
        author_id,
    )


async def test_refreshes_stale_authors_in_batches_of_100(world: World) -> None:
    bot = await world.add_bot()
    other = await world.add_bot("bot-2")
    for n in range(150):
        user_id = str(3000 + n)
        world.x.add_user(
            user_id, f"user{n}", public_metrics={"followers_count": n, "following_count": 1, "tweet_count": 2}
        )
        await add_authored_post(world, bot, user_id, str(90000 + n))
    await add_authored_post(world, bot, "9999", "99999")  # gone from X
    await add_authored_post(world, other, "3000", "88888")
    handler = UserFetchHandler(world.deps)

    result = await handler.run(world.ctx(bot, "user_fetch"))

    assert result == {"users_checked": 151, "users_refreshed": 150}
    batches = [r.query["ids"].split(",") for r in world.x.requests_to("users_lookup")]
    assert sorted(len(b) for b in batches) == [51, 100]
    row = await world.pool.fetchrow(
        "SELECT username, followers_count, fetched_at FROM x_users WHERE x_user_id = '3007'"
    )
    assert row["username"] == "user7" and row["followers_count"] == 7 and row["fetched_at"] is not None

    assert await handler.run(world.ctx(bot, "user_fetch")) == {"users_checked": 1, "users_refreshed": 0}

    await world.pool.execute(
        "UPDATE x_users SET fetched_at = now() - interval '3 hours' WHERE x_user_id = '3001'"
    )
    world.x.users["3001"]["name"] = "Renamed"
    result = await handler.run(world.ctx(bot, "user_fetch", max_age_hours=2))
    assert result == {"users_checked": 2, "users_refreshed": 1}
    assert await world.pool.fetchval("SELECT name FROM x_users WHERE x_user_id = '3001'") == "Renamed"
