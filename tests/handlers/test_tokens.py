"""OAuth tokens: encrypted at rest, one refresh for concurrent callers, invalid_grant, no leaks."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest

from activities.handlers.pull_mentions import PullMentionsHandler
from tests.handlers.conftest import World
from xbot.errors import NonRetryableTaskError
from xbot.tokens import AccessToken, TokenStore, store_tokens
from xbot.x_errors import ReauthorizationRequiredError, XServerError, XUnauthorizedError

SECRET_MARK = "secretvalue"  # every token the fake X issues contains it


def store(world: World) -> TokenStore:
    return TokenStore(world.pool, world.cipher, world.http, world.settings)


async def stored_pair(world: World, bot_id: str) -> tuple[str, str, int]:
    row = await world.pool.fetchrow(
        "SELECT access_token_enc, refresh_token_enc, version FROM bot_tokens WHERE bot_id = $1", bot_id
    )
    return (
        world.cipher.decrypt(row["access_token_enc"]),
        world.cipher.decrypt(row["refresh_token_enc"]),
        row["version"],
    )


async def test_tokens_are_encrypted_at_rest(world: World) -> None:
    bot = await world.add_bot()
    raw = await world.pool.fetchrow(
        "SELECT access_token_enc, refresh_token_enc FROM bot_tokens WHERE bot_id = $1", bot
    )
    assert SECRET_MARK.encode() not in raw["access_token_enc"] + raw["refresh_token_enc"]
    access, refresh, version = await stored_pair(world, bot)
    assert SECRET_MARK in access and refresh == world.x.refresh_token and version == 1


async def test_concurrent_refreshes_make_one_call_and_share_the_rotated_pair(world: World) -> None:
    bot = await world.add_bot(expires_in=timedelta(seconds=30))  # inside the one-minute margin
    world.x.refresh_delay = 0.3  # keep the first refresh in flight while the others queue on the lock
    workers = [store(world) for _ in range(4)]  # as if four activities on several workers

    tokens = await asyncio.gather(*(w.access_token(bot) for w in workers))

    assert world.x.refresh_calls == 1
    assert len({t.value for t in tokens}) == 1
    access, refresh, version = await stored_pair(world, bot)
    assert tokens[0].value == access and version == 2
    assert refresh == world.x.refresh_token  # the rotated refresh token was kept
    # ...and it still works: the next refresh succeeds.
    again = await workers[0].refresh(bot, version)
    assert world.x.refresh_calls == 2 and again.version == 3


async def test_a_401_refreshes_once_and_retries(world: World) -> None:
    bot = await world.add_bot(x_user_id="1000")
    world.x.access_tokens.clear()  # X forgot the access token; the refresh token is still good

    result = await PullMentionsHandler(world.deps).run(world.ctx(bot, "pull_mentions"))

    assert result == {"mentions_pulled": 0}
    assert world.x.refresh_calls == 1
    assert len(world.x.requests_to("mentions")) == 2


async def test_a_401_after_refresh_needs_reauthorization(world: World) -> None:
    bot = await world.add_bot(x_user_id="1000")
    world.x.inject("mentions", "401", "401")

    with pytest.raises(XUnauthorizedError) as raised:
        await PullMentionsHandler(world.deps).run(world.ctx(bot, "pull_mentions"))

    assert isinstance(raised.value, NonRetryableTaskError)
    assert (
        await world.pool.fetchval("SELECT auth_state FROM bots WHERE id = $1", bot) == "needs_reauthorization"
    )


@pytest.mark.parametrize("error_code", ["invalid_grant", "invalid_request"])
async def test_revoked_refresh_token_needs_reauthorization_until_new_tokens(
    world: World, error_code: str
) -> None:
    bot = await world.add_bot(x_user_id="1000", expires_in=timedelta(seconds=-5))
    world.x.refresh_token = None  # revoked at X
    world.x.invalid_refresh_error = error_code
    handler = PullMentionsHandler(world.deps)

    with pytest.raises(ReauthorizationRequiredError) as raised:
        await handler.run(world.ctx(bot, "pull_mentions"))
    assert isinstance(raised.value, NonRetryableTaskError)
    assert (
        await world.pool.fetchval("SELECT auth_state FROM bots WHERE id = $1", bot) == "needs_reauthorization"
    )
    logged = await world.pool.fetchval(
        "SELECT content FROM logs WHERE bot_id = $1 AND level = 'error' AND context->>'event' = 'needs_reauthorization'",
        bot,
    )
    assert logged is not None and "re-authorization" in logged

    # Until an operator stores new tokens, X tasks fail at once, without calling X.
    calls = len(world.x.requests)
    with pytest.raises(ReauthorizationRequiredError):
        await handler.run(world.ctx(bot, "pull_mentions"))
    assert len(world.x.requests) == calls

    access, refresh = world.x.issue_tokens()
    await store_tokens(world.pool, world.cipher, bot, access, refresh, None, scope="tweet.read")
    assert await world.pool.fetchval("SELECT auth_state FROM bots WHERE id = $1", bot) == "ok"
    assert await handler.run(world.ctx(bot, "pull_mentions")) == {"mentions_pulled": 0}


async def test_token_endpoint_outage_is_retryable_and_keeps_the_refresh_token(world: World) -> None:
    bot = await world.add_bot(expires_in=timedelta(seconds=10))
    world.x.inject("token", "500")
    before = await stored_pair(world, bot)

    with pytest.raises(XServerError) as raised:
        await store(world).access_token(bot)

    assert not isinstance(raised.value, NonRetryableTaskError)
    assert await stored_pair(world, bot) == before
    assert (await store(world).access_token(bot)).version == 2


async def test_no_token_in_logs_rows_reprs_or_errors(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bot = await world.add_bot(x_user_id="1000", expires_in=timedelta(seconds=5))
    world.x.add_user("2001", "alice")
    world.x.mention("2001")
    handler = PullMentionsHandler(world.deps)
    messages: list[str] = []

    await handler.run(world.ctx(bot, "pull_mentions"))  # refreshes, then pulls
    token = await store(world).access_token(bot)
    messages += [repr(token), str(token), repr(AccessToken("x-secretvalue", 1, None))]
    world.x.inject("mentions", "401", "401")
    for _ in range(2):
        try:
            await handler.run(world.ctx(bot, "pull_mentions"))
        except Exception as error:
            messages += [str(error), repr(error), repr(error.__cause__), repr(error.__context__)]
    world.x.refresh_token = None
    await world.pool.execute("UPDATE bots SET auth_state = 'ok' WHERE id = $1", bot)
    await world.pool.execute("UPDATE bot_tokens SET expires_at = now() WHERE bot_id = $1", bot)
    try:
        await handler.run(world.ctx(bot, "pull_mentions"))
    except Exception as error:
        messages += [str(error), repr(error)]

    rows = await world.pool.fetch("SELECT content, context::text AS context FROM logs")
    messages += [f"{row['content']} {row['context']}" for row in rows]
    for table in ("bots", "pulled_posts", "x_users", "rate_limit_tracking", "logs"):
        messages += [str(dict(row)) for row in await world.pool.fetch(f"SELECT * FROM {table}")]
    messages += [record.getMessage() for record in caplog.records]

    assert len(messages) > 10
    assert any("needs re-authorization" in m for m in messages)  # the failures were seen
    assert not [m for m in messages if SECRET_MARK in m or "fake-client-secret" in m]
