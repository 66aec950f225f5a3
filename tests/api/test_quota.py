"""GET /bots/{botId}/quota: the quota ledger's windows of a bot and of its app, as operators see them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from xbot.x import quota, quota_readings
from xbot.x.rate_limits import static_limit

APP = quota.app_key(None)  # the API tests run without X_CLIENT_ID


async def test_quota_lists_bot_and_app_windows_with_caps(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    for bot_id in ("poster", "quiet"):
        created = await client.post("/bots", json={"id": bot_id, "name": bot_id, "plan_tier": "basic"})
        assert created.status_code == 201, created.text
    now = datetime.now(UTC).replace(microsecond=0)
    day_reset = now + timedelta(hours=20)
    headers = {
        "x-rate-limit-limit": "100",
        "x-rate-limit-remaining": "97",
        "x-rate-limit-reset": str(int((now + timedelta(minutes=9)).timestamp())),
        "x-user-limit-24hour-limit": "100",
        "x-user-limit-24hour-remaining": "40",
        "x-user-limit-24hour-reset": str(int(day_reset.timestamp())),
        "x-app-limit-24hour-limit": "1667",
        "x-app-limit-24hour-remaining": "1200",
        "x-app-limit-24hour-reset": str(int(day_reset.timestamp())),
    }
    posted = await quota.reserve(pool, bot_id="poster", app=APP, endpoint="create_post", plan_tier="basic")
    static = static_limit("basic", "create_post")
    await quota.settle(pool, posted, quota_readings.read_response(201, headers, None, static=static, now=now))
    capped = await quota.reserve(pool, bot_id="poster", app=APP, endpoint="mentions", plan_tier="basic")
    problem = {
        "type": quota_readings.USAGE_CAPPED,
        "period": "Monthly",
        "scope": "Product",
        "detail": "Monthly product cap",
    }
    mentions_static = static_limit("basic", "mentions")
    await quota.settle(
        pool, capped, quota_readings.read_response(429, {}, problem, static=mentions_static, now=now)
    )
    in_flight = await quota.reserve(pool, bot_id="poster", app=APP, endpoint="create_post", plan_tier="basic")
    assert in_flight.ledger  # held in the 24-hour windows too

    response = await client.get("/bots/poster/quota")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["bot_id"] == "poster"
    limits = {(item["source"], item["endpoint"]): item for item in body["limits"]}
    assert limits[("x-user-limit-24hour", "create_post")] == {
        "scope": "bot",
        "endpoint": "create_post",
        "window": "24h",
        "limit": 100,
        "remaining": 40,
        "in_flight": 1,
        "resets_at": day_reset.isoformat().replace("+00:00", "Z"),
        "source": "x-user-limit-24hour",
        "reason": None,
    }
    app_day = limits[("x-app-limit-24hour", "create_post")]
    assert (app_day["scope"], app_day["limit"], app_day["remaining"], app_day["in_flight"]) == (
        "app",
        1667,
        1200,
        1,
    )
    # The endpoint window (`x-rate-limit-*`), labelled with the plan's window (basic: posts per 24 hours).
    endpoint_window = limits[("x-rate-limit", "create_post")]
    assert (endpoint_window["scope"], endpoint_window["window"]) == ("bot", "24h")
    assert (endpoint_window["limit"], endpoint_window["remaining"], endpoint_window["in_flight"]) == (
        100,
        97,
        1,
    )
    monthly = limits[("usage-capped", "mentions")]
    assert (monthly["scope"], monthly["window"], monthly["limit"], monthly["remaining"]) == (
        "app",
        "month",
        None,
        0,
    )
    assert monthly["resets_at"].startswith(quota_readings.first_of_next_month(now).date().isoformat())
    assert "Monthly product cap" in monthly["reason"]

    # A bot of the same app that never called X still sees the app's windows, not the other bot's.
    quiet = (await client.get("/bots/quiet/quota")).json()["limits"]
    assert {(item["scope"], item["endpoint"], item["window"]) for item in quiet} == {
        ("app", "create_post", "24h"),
        ("app", "mentions", "month"),
    }

    # Past its reset a window is shown full again, still saying where its numbers came from.
    await pool.execute(
        "UPDATE quota_windows SET reset_at = now() - interval '1 second' WHERE window_kind = '24h'"
    )
    refilled = {item["source"]: item for item in (await client.get("/bots/poster/quota")).json()["limits"]}
    assert (
        refilled["x-user-limit-24hour"]["remaining"] == 100
        and refilled["x-user-limit-24hour"]["resets_at"] is None
    )

    assert (await client.get("/bots/nobody/quota")).status_code == 404
    assert (await client.get("/bots/nobody/quota")).json() == {"error": "bot nobody not found"}
    assert (await anonymous.get("/bots/poster/quota")).status_code == 401
