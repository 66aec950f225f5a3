"""The quota ledger: slots reserved atomically, 24-hour and app-wide windows, usage caps, slots given
back when a request never left; against real PostgreSQL and the fake X over loopback HTTP."""

from __future__ import annotations

import asyncio
import itertools
import socket
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activities.handlers.pull_mentions import PullMentionsHandler
from tests.fakes.fake_x import RateWindow
from tests.handlers.conftest import World
from tests.support.factories import insert_bot
from xbot.errors import RateLimitedError
from xbot.storage.bots import load_bot
from xbot.x import quota, quota_readings, rate_limits
from xbot.x.client import XClient
from xbot.x.errors import XRateLimitedError, XServerError, XTimeoutError
from xbot.x.rate_limits import StaticLimit
from xbot.x.token_store import TokenStore

APP = "fake-client-id"  # X_CLIENT_ID of the handler tests' settings
BASIC_MENTIONS = StaticLimit(10, timedelta(minutes=15))
_bot_serial = itertools.count(1)


def client_for(world: World, bot_id: str, plan_tier: str, http: httpx.AsyncClient | None = None) -> XClient:
    return XClient(
        http=http or world.http,
        pool=world.pool,
        settings=world.settings,
        tokens=TokenStore(world.pool, world.cipher, world.http, world.settings),
        bot_id=bot_id,
        plan_tier=plan_tier,
    )


async def x_client(world: World, bot_id: str) -> XClient:
    return client_for(world, bot_id, (await load_bot(world.pool, bot_id)).plan_tier)


async def add_bot_as_user(world: World, bot_id: str, x_user_id: str) -> str:
    """A bot whose token belongs to another X user of the same app (own 24-hour allowance)."""
    access, refresh = world.x.issue_tokens()
    world.x.token_users[access] = x_user_id
    return await insert_bot(
        world.pool,
        bot_id,
        plan_tier="pro",
        x_user_id=x_user_id,
        cipher=world.cipher,
        tokens=(access, refresh),
    )


async def endpoint_row(pool: asyncpg.Pool, bot_id: str, endpoint: str) -> dict[str, object]:
    row = await pool.fetchrow(
        "SELECT limit_total, remaining, reserved, reset_at FROM rate_limit_tracking"
        " WHERE bot_id = $1 AND endpoint = $2",
        bot_id,
        endpoint,
    )
    assert row is not None
    return dict(row)


# --------------------------------------------------------------------------- reservations


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    attempts=st.integers(1, 12),
    free=st.integers(0, 8),
    binding=st.sampled_from(["bot 15m", "bot 24h", "app 24h"]),
    settled=st.integers(0, 12),
)
async def test_concurrent_reservations_take_exactly_the_free_slots(
    pool: asyncpg.Pool, attempts: int, free: int, binding: str, settled: int
) -> None:
    bot = f"race-{next(_bot_serial)}"
    app = f"app-of-{bot}"  # each example its own app: app windows are shared by every bot of one
    await insert_bot(pool, bot, plan_tier="pro")
    now = datetime.now(UTC)
    resets = {"bot 15m": now + timedelta(minutes=10), "bot 24h": now + timedelta(hours=20)}
    resets["app 24h"] = now + timedelta(hours=21)
    await pool.execute(
        "INSERT INTO rate_limit_tracking (bot_id, endpoint, limit_total, remaining, reset_at, app_key)"
        " VALUES ($1, 'create_post', 100, $2, $3, $4)",
        bot,
        free if binding == "bot 15m" else 100,
        resets["bot 15m"],
        app,
    )
    for name in ("bot 24h", "app 24h"):
        scope = name.split()[0]
        await pool.execute(
            "INSERT INTO quota_windows (scope, owner, endpoint, window_kind, limit_total, remaining, reset_at,"
            " bot_id, source) VALUES ($1, $2, 'create_post', '24h', 1000, $3, $4, $5, $6)",
            scope,
            bot if scope == "bot" else app,
            free if binding == name else 1000,
            resets[name],
            bot if scope == "bot" else None,
            f"x-{'user' if scope == 'bot' else 'app'}-limit-24hour",
        )

    results = await asyncio.gather(
        *(
            quota.reserve(pool, bot_id=bot, app=app, endpoint="create_post", plan_tier="pro")
            for _ in range(attempts)
        ),
        return_exceptions=True,
    )

    taken = [r for r in results if isinstance(r, quota.Reservation)]
    refused = [r for r in results if isinstance(r, quota.QuotaExhausted)]
    assert len(taken) == min(attempts, free)
    assert len(taken) + len(refused) == attempts
    assert all(error.reset_at == resets[binding] for error in refused)
    # The task runner's gate sees the tightest window, slots in flight counted as spent.
    room = await rate_limits.headroom(pool, bot, "create_post", "pro")
    assert room.remaining == free - len(taken)
    assert f"{room.scope} {room.window}" == binding and room.reset_at == resets[binding]

    # Some requests were sent (counted), the others never left (given back): nothing stays in flight.
    for number, reservation in enumerate(taken):
        if number < settled:
            await quota.settle(pool, reservation, None)
        else:
            await quota.release(pool, reservation)
    windows = {
        f"{w.scope} {w.window}": w for w in await quota.live_windows(pool, bot, "create_post", "pro", now)
    }
    assert all(window.in_flight == 0 for window in windows.values())
    assert windows[binding].remaining == free - min(settled, len(taken))


async def test_a_slot_held_by_a_dead_worker_stops_counting_after_its_lease(pool: asyncpg.Pool) -> None:
    await insert_bot(pool, "b")
    now = datetime.now(UTC)
    await pool.execute(
        "INSERT INTO rate_limit_tracking (bot_id, endpoint, limit_total, remaining, reset_at)"
        " VALUES ('b', 'mentions', 10, 1, $1)",
        now + timedelta(minutes=14),
    )
    lease = timedelta(minutes=2)
    await quota.reserve(
        pool, bot_id="b", app=APP, endpoint="mentions", plan_tier="basic", now=now, lease=lease
    )

    # Never settled nor released (the worker died): the slot counts while its lease runs...
    with pytest.raises(quota.QuotaExhausted):
        await quota.reserve(
            pool, bot_id="b", app=APP, endpoint="mentions", plan_tier="basic", now=now + timedelta(minutes=1)
        )
    # ...and not after.
    later = now + lease + timedelta(seconds=1)
    await quota.reserve(pool, bot_id="b", app=APP, endpoint="mentions", plan_tier="basic", now=later)
    assert (await endpoint_row(pool, "b", "mentions"))["reserved"] == 1


# --------------------------------------------------------------------------- reading X's answers


NOW = datetime(2025, 3, 14, 15, 9, 26, tzinfo=UTC)


def epoch(moment: datetime) -> str:
    return str(int(moment.timestamp()))


def test_a_monthly_usage_cap_closes_the_app_window_until_the_first_of_next_month() -> None:
    headers = {
        "x-rate-limit-limit": "40000",
        "x-rate-limit-remaining": "39999",
        "x-rate-limit-reset": "1741965266",
    }
    body = {
        "title": "UsageCapExceeded",
        "period": "Monthly",
        "scope": "Product",
        "detail": "Usage cap exceeded: Monthly product cap",
        "type": quota_readings.USAGE_CAPPED,
    }

    observation = quota_readings.read_response(429, headers, body, static=BASIC_MENTIONS, now=NOW)

    assert observation.retry_at == datetime(2025, 4, 1, tzinfo=UTC)
    assert observation.endpoint_window == (40000, 39999, datetime.fromtimestamp(1741965266, UTC))
    (closed,) = observation.readings
    assert (closed.scope, closed.window, closed.remaining) == ("app", "month", 0)
    assert "Monthly product cap" in (closed.reason or "")
    # X's own reset, when it gives one, wins.
    with_retry = quota_readings.read_response(
        429, {**headers, "retry-after": "3600"}, body, static=BASIC_MENTIONS, now=NOW
    )
    assert with_retry.retry_at == NOW + timedelta(hours=1)


def test_a_daily_usage_cap_with_the_users_day_spent_closes_the_bots_day() -> None:
    user_reset, app_reset = NOW + timedelta(hours=7), NOW + timedelta(hours=9)
    headers = {
        "x-user-limit-24hour-limit": "17",
        "x-user-limit-24hour-remaining": "0",
        "x-user-limit-24hour-reset": epoch(user_reset),
        "x-app-limit-24hour-limit": "1667",
        "x-app-limit-24hour-remaining": "1500",
        "x-app-limit-24hour-reset": epoch(app_reset),
    }
    body = {
        "title": "UsageCapExceeded",
        "period": "Daily",
        "scope": "Account",
        "type": quota_readings.USAGE_CAPPED,
    }

    observation = quota_readings.read_response(429, headers, body, static=BASIC_MENTIONS, now=NOW)

    assert observation.retry_at == user_reset
    readings = {(r.scope, r.window): r for r in observation.readings}
    assert (readings[("bot", "24h")].remaining, readings[("bot", "24h")].limit) == (0, 17)
    assert readings[("bot", "24h")].reason is not None
    assert readings[("app", "24h")].remaining == 1500


def test_a_daily_usage_cap_without_headers_closes_the_apps_day() -> None:
    body = {"errors": [{"type": quota_readings.USAGE_CAPPED, "period": "Daily", "title": "UsageCapExceeded"}]}
    observation = quota_readings.read_response(429, {}, body, static=BASIC_MENTIONS, now=NOW)
    assert observation.retry_at == NOW + timedelta(hours=24)
    assert [(r.scope, r.window, r.remaining) for r in observation.readings] == [("app", "24h", 0)]


def test_a_429_while_the_bots_windows_had_room_closes_the_apps_15_minutes() -> None:
    headers = {"x-rate-limit-limit": "300", "x-rate-limit-remaining": "120", "x-rate-limit-reset": epoch(NOW)}
    observation = quota_readings.read_response(
        429, headers, {"title": "Too Many Requests"}, static=BASIC_MENTIONS, now=NOW
    )
    assert observation.retry_at == NOW + timedelta(minutes=15)
    assert [(r.scope, r.window, r.remaining) for r in observation.readings] == [("app", "15m", 0)]


def test_a_429_without_headers_spends_the_plans_window() -> None:
    observation = quota_readings.read_response(
        429, {"retry-after": "60"}, None, static=BASIC_MENTIONS, now=NOW
    )
    assert observation.endpoint_window == (10, 0, NOW + timedelta(seconds=60))
    assert observation.retry_at == NOW + timedelta(seconds=60) and observation.readings == ()


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)))
def test_first_of_next_month_is_the_next_months_first_midnight(now: datetime) -> None:
    reset = quota_readings.first_of_next_month(now)
    assert (reset.day, reset.hour, reset.minute, reset.second, reset.microsecond) == (1, 0, 0, 0, 0)
    assert reset.tzinfo == UTC
    assert timedelta(0) < reset - now <= timedelta(days=31)
    assert (reset.year * 12 + reset.month) - (now.year * 12 + now.month) == 1


# --------------------------------------------------------------------------- through the X client


@pytest.mark.parametrize(("attempts", "left"), [(6, 2), (4, 0), (3, 5)])
async def test_concurrent_requests_never_spend_more_than_the_window_has(
    world: World, attempts: int, left: int
) -> None:
    bot = await world.add_bot()
    reset = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=12)
    world.x.rate["mentions"] = RateWindow(limit=75, remaining=left + 1, reset_at=reset)
    x = await x_client(world, bot)
    await x.mentions("1000")  # the ledger learns the window from X's headers: `left` to go

    results = await asyncio.gather(*(x.mentions("1000") for _ in range(attempts)), return_exceptions=True)

    refused = [r for r in results if isinstance(r, XRateLimitedError)]
    assert len(results) - len(refused) == min(attempts, left)
    assert all(not r.sent and r.reset_at == reset for r in refused)
    # X saw exactly what it allowed and answered no 429.
    assert len(world.x.requests_to("mentions")) == 1 + min(attempts, left)
    assert (await endpoint_row(world.pool, bot, "mentions"))["reserved"] == 0


async def test_a_usage_cap_postpones_until_next_month_for_every_bot_of_the_app(world: World) -> None:
    bot = await world.add_bot()
    other = await world.add_bot("bot-2")
    world.x.cap("mentions", "Monthly", "Product")
    next_month = quota_readings.first_of_next_month(datetime.now(UTC))

    with pytest.raises(RateLimitedError) as raised:
        await PullMentionsHandler(world.deps).run(world.ctx(bot, "pull_mentions"))
    assert isinstance(raised.value, XRateLimitedError) and raised.value.sent
    assert raised.value.reset_at == next_month  # not X's 15-minute reset: no retry every 15 minutes
    assert "Monthly product cap" in str(raised.value)

    sent = len(world.x.requests_to("mentions"))
    for bot_id in (bot, other):  # the cap is the app's: the other bot does not try either
        with pytest.raises(XRateLimitedError) as refused:
            await (await x_client(world, bot_id)).mentions("1000")
        assert not refused.value.sent and refused.value.reset_at == next_month
    assert len(world.x.requests_to("mentions")) == sent
    # The task runner's gate sees it too, and other endpoints are not affected.
    room = await rate_limits.headroom(world.pool, other, "mentions", "pro")
    assert (
        not room.allows(0) and room.reset_at == next_month and (room.scope, room.window) == ("app", "month")
    )
    await (await x_client(world, bot)).get_me()


async def test_the_users_daily_allowance_stops_posting_until_its_reset(world: World) -> None:
    bot = await world.add_bot()
    world.x.add_user("2001", "alice")
    mentions = [world.x.mention("2001", f"@helperbot q{i}") for i in range(3)]
    world.x.daily_user_limit = 2
    x = await x_client(world, bot)

    await x.create_post("first answer", mentions[0])
    await x.create_post("second answer", mentions[1])
    with pytest.raises(XRateLimitedError) as refused:
        await x.create_post("third answer", mentions[2])

    day = world.x.daily_user[("1000", "create_post")]
    assert not refused.value.sent  # the headers said 0 left: nothing sent
    assert refused.value.reset_at == day.reset_at.replace(microsecond=0)
    assert len(world.x.requests_to("create_post")) == 2
    windows = {(w.scope, w.window): w for w in await quota.bot_quota(world.pool, bot, "pro")}
    assert (windows[("bot", "24h")].limit, windows[("bot", "24h")].remaining) == (2, 0)
    assert windows[("app", "24h")].remaining == world.x.x_app.daily_limit - 2


async def test_the_apps_daily_allowance_is_shared_by_its_bots(world: World) -> None:
    first = await world.add_bot()
    second = await add_bot_as_user(world, "bot-2", "1001")
    world.x.add_user("2001", "alice")
    mentions = [world.x.mention("2001", f"@helperbot q{i}") for i in range(4)]
    world.x.x_app.daily_limit = 3
    x = await x_client(world, first)
    for number in range(3):
        await x.create_post(f"answer {number}", mentions[number])

    # The second bot has its own user allowance, never posted, and still knows the app's day is spent.
    with pytest.raises(XRateLimitedError) as refused:
        await (await x_client(world, second)).create_post("answer 3", mentions[3])

    assert not refused.value.sent
    assert refused.value.reset_at == world.x.x_app.daily["create_post"].reset_at.replace(microsecond=0)
    assert len(world.x.requests_to("create_post")) == 3


async def test_a_request_that_could_not_connect_gives_its_slot_back(world: World) -> None:
    bot = await world.add_bot(plan_tier="free")  # mentions: 1 request per 15 minutes
    world.x.rate_headers = False
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    unreachable = world.settings.model_copy(update={"x_api_base_url": f"http://127.0.0.1:{dead_port}"})
    x_down = XClient(
        http=world.http,
        pool=world.pool,
        settings=unreachable,
        tokens=TokenStore(world.pool, world.cipher, world.http, world.settings),
        bot_id=bot,
        plan_tier="free",
    )

    with pytest.raises(XServerError):
        await x_down.mentions("1000")

    row = await endpoint_row(world.pool, bot, "mentions")
    assert (row["limit_total"], row["remaining"], row["reserved"]) == (1, 1, 0)
    await client_for(world, bot, "free").mentions("1000")  # the one slot is still there
    assert (await endpoint_row(world.pool, bot, "mentions"))["remaining"] == 0


async def test_a_request_cancelled_before_it_left_gives_its_slot_back(world: World) -> None:
    bot = await world.add_bot(plan_tier="basic")  # mentions: 10 per 15 minutes
    world.x.rate_headers = False
    world.x.inject("mentions", "hang")
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1)) as http:
        x = client_for(world, bot, "basic", http)
        hog = asyncio.create_task(x.mentions("1000"))  # sent, then X never answers
        await asyncio.sleep(0.3)
        waiting = asyncio.create_task(x.mentions("1000"))  # reserved, queued for the only connection
        await asyncio.sleep(0.3)
        assert (await endpoint_row(world.pool, bot, "mentions"))["reserved"] == 2

        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        with pytest.raises(XTimeoutError):
            await hog

    row = await endpoint_row(world.pool, bot, "mentions")
    # The hung request may have reached X: it counts. The cancelled one never left: it does not.
    assert (row["remaining"], row["reserved"]) == (9, 0)
    assert len(world.x.requests_to("mentions")) == 1
