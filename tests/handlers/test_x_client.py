"""The X client against the fake X: error types, rate-limit tracking, refusing what X would refuse."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest

from tests.fakes.fake_x import RateWindow
from tests.handlers.conftest import World
from xbot.errors import NonRetryableTaskError, RateLimitedError
from xbot.storage.bots import load_bot
from xbot.x.client import XClient
from xbot.x.errors import (
    XBadRequestError,
    XForbiddenError,
    XMalformedResponseError,
    XNotFoundError,
    XRateLimitedError,
    XServerError,
    XTimeoutError,
    XTransientError,
)
from xbot.x.responses import missing_posts
from xbot.x.token_store import TokenStore


async def client_for(world: World, bot_id: str) -> XClient:
    bot = await load_bot(world.pool, bot_id)
    tokens = TokenStore(world.pool, world.cipher, world.http, world.settings)
    return XClient(
        http=world.http,
        pool=world.pool,
        settings=world.settings,
        tokens=tokens,
        bot_id=bot.id,
        plan_tier=bot.plan_tier,
    )


async def tracked(world: World, bot_id: str, endpoint: str) -> tuple[int, int, datetime] | None:
    row = await world.pool.fetchrow(
        "SELECT limit_total, remaining, reset_at FROM rate_limit_tracking WHERE bot_id = $1 AND endpoint = $2",
        bot_id,
        endpoint,
    )
    return (row["limit_total"], row["remaining"], row["reset_at"]) if row else None


async def test_headers_update_rate_limit_tracking(world: World) -> None:
    bot = await world.add_bot()
    reset = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=7)
    world.x.rate["mentions"] = RateWindow(limit=75, remaining=40, reset_at=reset)
    x = await client_for(world, bot)

    await x.mentions("1000")

    assert await tracked(world, bot, "mentions") == (75, 39, reset)


async def test_429_raises_with_the_reset_and_the_next_request_is_not_sent(world: World) -> None:
    bot = await world.add_bot()
    reset = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=9)
    world.x.rate["mentions"] = RateWindow(limit=75, remaining=0, reset_at=reset)
    x = await client_for(world, bot)

    with pytest.raises(XRateLimitedError) as raised:
        await x.mentions("1000")
    assert raised.value.reset_at == reset and raised.value.sent
    assert isinstance(raised.value, RateLimitedError)
    assert await tracked(world, bot, "mentions") == (75, 0, reset)

    sent_before = len(world.x.requests_to("mentions"))
    with pytest.raises(XRateLimitedError) as refused:
        await x.mentions("1000")
    assert not refused.value.sent and refused.value.reset_at == reset
    assert len(world.x.requests_to("mentions")) == sent_before
    # Other endpoints are not affected.
    await x.get_me()


async def test_static_plan_limit_applies_before_x_sent_headers(world: World) -> None:
    bot = await world.add_bot(plan_tier="free")  # mentions: 1 request per 15 minutes
    world.x.rate_headers = False
    x = await client_for(world, bot)

    await x.mentions("1000")
    with pytest.raises(XRateLimitedError) as refused:
        await x.mentions("1000")

    assert not refused.value.sent
    assert len(world.x.requests_to("mentions")) == 1
    limit, remaining, _reset = await tracked(world, bot, "mentions") or (0, 0, None)
    assert (limit, remaining) == (1, 0)


@pytest.mark.parametrize(
    ("fault", "error_type"),
    [
        ("500", XServerError),
        ("503", XServerError),
        ("hang", XTimeoutError),
        ("malformed", XMalformedResponseError),
    ],
)
async def test_transient_failures_are_retryable(
    world: World, fault: str, error_type: type[Exception]
) -> None:
    bot = await world.add_bot()
    world.x.inject("mentions", fault)  # type: ignore[arg-type]
    x = await client_for(world, bot)

    with pytest.raises(error_type) as raised:
        await x.mentions("1000")

    assert isinstance(raised.value, XTransientError)
    assert not isinstance(raised.value, NonRetryableTaskError)
    assert (await x.mentions("1000")).posts == []  # the next call goes through


async def test_400_carries_x_error_details_and_is_not_retryable(world: World) -> None:
    bot = await world.add_bot()
    world.x.add_user("2001", "alice")
    mention = world.x.mention("2001")
    x = await client_for(world, bot)

    with pytest.raises(XBadRequestError) as raised:
        await x.create_post("x" * 281, mention)

    assert isinstance(raised.value, NonRetryableTaskError)
    assert raised.value.status == 400
    assert "One or more parameters to your request was invalid" in str(raised.value)
    assert "text is invalid" in raised.value.details


async def test_missing_post_is_not_found(world: World) -> None:
    bot = await world.add_bot()
    x = await client_for(world, bot)

    with pytest.raises(XNotFoundError):
        await x.get_post("123456789")


async def test_users_lookup_reports_missing_ids(world: World) -> None:
    bot = await world.add_bot()
    world.x.add_user("2001", "alice")
    x = await client_for(world, bot)

    page = await x.users_by_ids(["2001", "2999"])

    assert [u["username"] for u in page.users] == ["alice"]
    assert [e["resource_id"] for e in page.errors] == ["2999"]
    with pytest.raises(ValueError):
        await x.users_by_ids([str(i) for i in range(101)])


async def test_posts_lookup_answers_partially_with_a_reason_per_missing_post(world: World) -> None:
    bot = await world.add_bot()
    world.x.add_user("2001", "alice")
    world.x.add_user("2666", "gone")
    kept = world.x.add_post("2001", "still here")
    hidden = world.x.add_post("2666", "by a suspended account")
    world.x.suspended.add("2666")
    x = await client_for(world, bot)

    page = await x.get_posts([kept, hidden, "123456789"])

    assert [post["id"] for post in page.posts] == [kept]
    assert [user["username"] for user in page.users] == ["alice"]
    reasons = missing_posts(page, [kept, hidden, "123456789"])
    assert set(reasons) == {hidden, "123456789"}
    assert reasons[hidden].startswith("resource-unavailable: User has been suspended")
    assert reasons["123456789"].startswith("resource-not-found: Could not find tweet")
    # A single lookup of an unavailable post is a refusal, not a malformed answer to retry.
    with pytest.raises(XForbiddenError):
        await x.get_post(hidden)
    with pytest.raises(ValueError):
        await x.get_posts([str(i) for i in range(101)])


async def test_every_answer_feeds_the_quota_ledger(world: World) -> None:
    bot = await world.add_bot()
    world.x.add_user("2001", "alice")
    mention = world.x.mention("2001")
    x = await client_for(world, bot)

    await x.create_post("thanks!", mention)

    user_day = world.x.daily_user[("1000", "create_post")]
    app_day = world.x.x_app.daily["create_post"]
    rows = await world.pool.fetch(
        "SELECT scope, owner, window_kind, limit_total, remaining, reset_at, reserved FROM quota_windows"
        " WHERE endpoint = 'create_post' ORDER BY scope"
    )
    assert [tuple(row.values()) for row in rows] == [
        (
            "app",
            "fake-client-id",
            "24h",
            app_day.limit,
            app_day.remaining,
            app_day.reset_at.replace(microsecond=0),
            0,
        ),
        ("bot", bot, "24h", user_day.limit, user_day.remaining, user_day.reset_at.replace(microsecond=0), 0),
    ]
    window = world.x.rate["create_post"]
    assert await tracked(world, bot, "create_post") == (
        window.limit,
        window.remaining,
        window.reset_at.replace(microsecond=0),
    )


async def test_a_401_retry_reserves_again_and_leaves_no_slot_in_flight(world: World) -> None:
    bot = await world.add_bot()
    world.x.inject("mentions", "401")
    x = await client_for(world, bot)

    await x.mentions("1000")

    assert len(world.x.requests_to("mentions")) == 2
    assert world.x.refresh_calls == 1
    reserved = await world.pool.fetchval(
        "SELECT reserved FROM rate_limit_tracking WHERE bot_id = $1 AND endpoint = 'mentions'", bot
    )
    assert reserved == 0
    assert await tracked(world, bot, "mentions") == (
        900,
        world.x.rate["mentions"].remaining,
        world.x.rate["mentions"].reset_at.replace(microsecond=0),
    )


class BreakingProxy:
    """A loopback TCP proxy in front of the fake X that cuts the first `breaks` connections as soon
    as a request arrives, without answering: a keep-alive connection the server had just closed."""

    def __init__(self, target: str, breaks: int) -> None:
        parsed = urlsplit(target)
        self.target = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.breaks = breaks
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.breaks > 0:
            self.breaks -= 1
            await reader.read(1)  # the request began
            writer.transport.abort()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await source.read(65536):
                    sink.write(chunk)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


async def client_through(world: World, bot_id: str, base_url: str) -> XClient:
    bot = await load_bot(world.pool, bot_id)
    settings = world.settings.model_copy(update={"x_api_base_url": base_url})
    return XClient(
        http=world.http,
        pool=world.pool,
        settings=settings,
        tokens=TokenStore(world.pool, world.cipher, world.http, settings),
        bot_id=bot.id,
        plan_tier=bot.plan_tier,
    )


@pytest.mark.parametrize("breaks", [1, 2])
async def test_a_read_on_a_broken_connection_is_sent_once_more(world: World, breaks: int) -> None:
    bot = await world.add_bot()
    author = "2000"
    world.x.add_user(author, "someone")
    mention = world.x.mention(author, "hello @helperbot")
    proxy = BreakingProxy(world.settings.x_api_base_url, breaks)
    async with proxy as base_url:
        x = await client_through(world, bot, base_url)
        if breaks == 1:
            page = await x.mentions(world.x.bot_user_id)
            assert [post["id"] for post in page.posts] == [mention]
        else:  # broken twice: not a stale connection but X unreachable; the attempt fails retryably
            with pytest.raises(XServerError) as raised:
                await x.mentions(world.x.bot_user_id)
            assert isinstance(raised.value, XTransientError)
    assert proxy.connections == 2
    # No quota slot is left taken by the broken sends.
    reserved = await world.pool.fetchval(
        "SELECT coalesce(sum(reserved), 0) FROM rate_limit_tracking WHERE bot_id = $1", bot
    )
    assert reserved == 0


async def test_a_write_on_a_broken_connection_is_not_sent_again(world: World) -> None:
    bot = await world.add_bot()
    author = "2000"
    world.x.add_user(author, "someone")
    mention = world.x.mention(author, "hello @helperbot")
    proxy = BreakingProxy(world.settings.x_api_base_url, breaks=1)
    async with proxy as base_url:
        x = await client_through(world, bot, base_url)
        with pytest.raises(XServerError):
            await x.create_post("hi there", in_reply_to=mention)
    # The exactly-once recovery decides what happens next, not a blind resend.
    assert proxy.connections == 1
    assert world.x.replies_by_bot(mention) == []
