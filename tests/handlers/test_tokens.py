"""OAuth tokens: encrypted at rest, one refresh for concurrent callers, a new pair never lost (caller
cancelled, commit failed, answer lost), public clients, invalid_grant, no leaks."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activities.handlers.pull_mentions import PullMentionsHandler
from tests.handlers.conftest import World
from xbot.bots import get_bot
from xbot.errors import NonRetryableTaskError
from xbot.x.errors import ReauthorizationRequiredError, XServerError, XUnauthorizedError
from xbot.x.token_store import TokenStore
from xbot.x.tokens import (
    AccessToken,
    TokenRefreshAnswerLostError,
    TokenSaveError,
    drain_refreshes,
    store_tokens,
)

SECRET_MARK = "secretvalue"  # every token the fake X issues contains it


def store(world: World, **options: Any) -> TokenStore:
    return TokenStore(world.pool, world.cipher, world.http, world.settings, **options)


async def refresh_row(world: World, bot_id: str) -> dict[str, object]:
    row = await world.pool.fetchrow(
        "SELECT t.refresh_state, t.refresh_note, t.version, b.auth_state"
        " FROM bot_tokens t JOIN bots b ON b.id = t.bot_id WHERE t.bot_id = $1",
        bot_id,
    )
    return dict(row)


async def until(condition: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.01)


FAIL_COMMITS_SQL = """
CREATE SEQUENCE failed_commits;
CREATE FUNCTION fail_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('failed_commits') <= {times} THEN
        RAISE EXCEPTION 'commit refused by the test';
    END IF;
    RETURN NULL;
END $$;
-- Deferred: the UPDATE succeeds and COMMIT itself fails, as when the server goes away at that moment.
CREATE CONSTRAINT TRIGGER fail_commit AFTER UPDATE ON bot_tokens DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.version > OLD.version) EXECUTE FUNCTION fail_commit();
"""


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
    await store_tokens(world.pool, world.cipher, bot, access, refresh, None, scope="tweet.read users.read")
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


async def test_a_caller_cancelled_after_x_answered_still_saves_the_new_pair(world: World) -> None:
    bot = await world.add_bot(expires_in=timedelta(seconds=30))
    world.x.refresh_delay = 0.2
    old_refresh = world.x.refresh_token
    caller = asyncio.create_task(store(world).access_token(bot))

    async def claimed() -> bool:
        return (await refresh_row(world, bot))["refresh_state"] == "in_flight"

    await until(claimed)
    # Hold the save back behind our own row lock, so the cancellation lands between X's answer and the
    # commit of the new pair: the worst moment, X has already spent the stored refresh token.
    async with world.pool.acquire() as blocker:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT 1 FROM bot_tokens WHERE bot_id = $1 FOR UPDATE", bot)
        await asyncio.wait_for(world.x.token_answered.wait(), 5)
        await asyncio.sleep(0.2)  # the client has read the answer and waits for the row lock
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert old_refresh in world.x.spent_refresh_tokens
        await transaction.rollback()

    await drain_refreshes(timeout=10)
    access, refresh, version = await stored_pair(world, bot)
    assert refresh == world.x.refresh_token and access in world.x.access_tokens and version == 2
    assert (await refresh_row(world, bot))["refresh_state"] == "idle"
    assert (await store(world).access_token(bot)).value == access
    assert world.x.refresh_calls == 1


async def test_a_failed_commit_of_the_new_pair_is_retried(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    bot = await world.add_bot(expires_in=timedelta(seconds=30))
    await world.pool.execute(FAIL_COMMITS_SQL.format(times=2))

    token = await store(world, save_backoff_seconds=0.05).access_token(bot)

    access, refresh, version = await stored_pair(world, bot)
    assert token.value == access and version == token.version == 2
    assert refresh == world.x.refresh_token and world.x.refresh_calls == 1
    retries = [r for r in caplog.records if "could not save the refreshed OAuth tokens" in r.getMessage()]
    assert len(retries) == 2
    assert await world.pool.fetchval("SELECT nextval('failed_commits')") == 4


async def test_a_pair_that_cannot_be_saved_is_kept_and_saved_on_next_use(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    bot = await world.add_bot(expires_in=timedelta(seconds=30))
    await world.pool.execute(FAIL_COMMITS_SQL.format(times=1000))
    tokens = store(world, save_tries=3, save_backoff_seconds=0.05)

    with pytest.raises(TokenSaveError) as raised:
        await tokens.access_token(bot)

    assert not isinstance(raised.value, NonRetryableTaskError)  # the activity retries
    assert "saving them failed 3 times" in str(raised.value)
    loud = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert loud and f"bot {bot}" in loud[0].getMessage()
    assert SECRET_MARK not in str(raised.value) + repr(raised.value) + loud[0].getMessage()

    await world.pool.execute("DROP TRIGGER fail_commit ON bot_tokens")
    token = await tokens.access_token(bot)  # saved from memory, without asking X again

    access, refresh, version = await stored_pair(world, bot)
    assert token.value == access and version == 2 and refresh == world.x.refresh_token
    assert world.x.refresh_calls == 1
    assert (await refresh_row(world, bot))["refresh_state"] == "idle"


async def test_a_lost_answer_is_flagged_and_the_old_token_is_tried_once(world: World) -> None:
    bot = await world.add_bot(expires_in=timedelta(seconds=30))
    world.x.inject("token", "rotate_then_hang")  # X rotates; its answer comes after the client gave up

    with pytest.raises(TokenRefreshAnswerLostError) as raised:
        await store(world).access_token(bot)

    assert not isinstance(raised.value, NonRetryableTaskError)
    assert "old refresh token may be spent" in str(raised.value)
    row = await refresh_row(world, bot)
    assert row["refresh_state"] == "answer_lost" and row["auth_state"] == "ok"
    assert "refresh answer lost" in str(row["refresh_note"])
    shown = await get_bot(world.pool, bot)  # what GET /bots/{id} returns
    assert shown is not None and shown.token_note == "refresh answer lost; the old refresh token may be spent"
    logged = await world.pool.fetchval(
        "SELECT content FROM logs WHERE bot_id = $1 AND context->>'event' = 'refresh_answer_lost'", bot
    )
    assert logged is not None and "may be spent" in logged

    with pytest.raises(ReauthorizationRequiredError) as refused:
        await store(world).access_token(bot)

    assert "refresh answer lost" in refused.value.reason and "invalid_grant" in refused.value.reason
    row = await refresh_row(world, bot)
    assert row["auth_state"] == "needs_reauthorization" and row["refresh_state"] == "idle"
    assert len(world.x.requests_to("token")) == 2  # the lost one and one try with the old token
    with pytest.raises(ReauthorizationRequiredError, match="refresh answer lost"):
        await store(world).access_token(bot)
    assert len(world.x.requests_to("token")) == 2


async def test_a_request_lost_before_x_acted_recovers_with_the_old_token(world: World) -> None:
    bot = await world.add_bot(expires_in=timedelta(seconds=30))
    world.x.inject("token", "hang")  # X never acts on it: the stored refresh token still works

    with pytest.raises(TokenRefreshAnswerLostError):
        await store(world).access_token(bot)
    assert (await refresh_row(world, bot))["refresh_state"] == "answer_lost"

    token = await store(world).access_token(bot)

    access, refresh, version = await stored_pair(world, bot)
    assert token.value == access and version == 2 and refresh == world.x.refresh_token
    row = await refresh_row(world, bot)
    assert row["refresh_state"] == "idle" and row["refresh_note"] is None and row["auth_state"] == "ok"
    events = await world.pool.fetch(
        "SELECT context->>'event' AS e FROM logs WHERE bot_id = $1 ORDER BY id", bot
    )
    assert [r["e"] for r in events] == ["refresh_answer_lost", "refresh_answer_recovered"]


async def test_a_live_lease_is_waited_for_and_a_dead_one_taken_over(world: World) -> None:
    bot = await world.add_bot(expires_in=timedelta(seconds=30))
    # As if another worker claimed the refresh and was killed while X had its request.
    await world.pool.execute(
        "UPDATE bot_tokens SET refresh_state = 'in_flight', refresh_claim = gen_random_uuid(),"
        " refresh_lease_until = now() + interval '1 second' WHERE bot_id = $1",
        bot,
    )
    waiter = asyncio.create_task(store(world).access_token(bot))
    await asyncio.sleep(0.5)
    assert not waiter.done() and world.x.refresh_calls == 0  # the lease holder might still answer

    token = await asyncio.wait_for(waiter, 5)

    assert world.x.refresh_calls == 1 and token.version == 2
    logged = await world.pool.fetchval(
        "SELECT content FROM logs WHERE bot_id = $1 AND context->>'event' = 'refresh_answer_lost'", bot
    )
    assert logged is not None and "stopped while waiting for X" in logged
    assert (await refresh_row(world, bot))["refresh_state"] == "idle"


async def test_a_public_client_refreshes_with_client_id_in_the_body(world: World) -> None:
    bot = await world.add_bot(expires_in=timedelta(seconds=30))
    world.x.public_client = True
    public = world.settings.model_copy(update={"x_client_secret": None})

    token = await TokenStore(world.pool, world.cipher, world.http, public).access_token(bot)

    assert world.x.refresh_calls == 1 and token.version == 2
    assert (await stored_pair(world, bot))[1] == world.x.refresh_token


async def test_a_confidential_app_refuses_a_public_refresh_and_keeps_the_token(world: World) -> None:
    bot = await world.add_bot(expires_in=timedelta(seconds=30))
    public = world.settings.model_copy(update={"x_client_secret": None})

    with pytest.raises(NonRetryableTaskError, match="client credentials"):
        await TokenStore(world.pool, world.cipher, world.http, public).access_token(bot)

    assert (await refresh_row(world, bot))["refresh_state"] == "idle"
    assert (await stored_pair(world, bot))[1] == world.x.refresh_token  # X's Basic-auth check refused it
    assert (await store(world).access_token(bot)).version == 2


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    callers=st.lists(
        st.tuples(
            st.floats(0, 0.15),  # when the caller starts
            st.one_of(st.none(), st.floats(0, 0.3)),  # when it is cancelled, if ever
        ),
        min_size=1,
        max_size=4,
    ),
    x_delay=st.sampled_from([0.0, 0.05, 0.2]),
)
async def test_random_interleavings_of_refreshers_and_cancellations_never_lose_the_pair(
    world: World, callers: list[tuple[float, float | None]], x_delay: float
) -> None:
    bot = await world.add_bot(f"hyp-{uuid.uuid4().hex[:10]}", expires_in=timedelta(seconds=30))
    calls_before = world.x.refresh_calls
    world.x.refresh_delay = x_delay

    async def caller(start: float, cancel_after: float | None) -> AccessToken | None:
        await asyncio.sleep(start)
        task = asyncio.create_task(store(world).access_token(bot))  # its own store: another worker
        if cancel_after is not None:
            await asyncio.sleep(cancel_after)
            task.cancel()
        try:
            return await task
        except asyncio.CancelledError:
            return None

    results = await asyncio.gather(*(caller(start, cancel) for start, cancel in callers))
    await drain_refreshes(timeout=10)

    access, refresh, version = await stored_pair(world, bot)
    calls = world.x.refresh_calls - calls_before
    assert calls <= 1 and version == 1 + calls
    assert refresh == world.x.refresh_token  # what is stored is what X will accept next
    assert access in world.x.access_tokens
    assert all(result.value == access for result in results if result is not None)
    row = await refresh_row(world, bot)
    assert row["refresh_state"] == "idle" and row["auth_state"] == "ok"


async def test_no_stored_refresh_token_needs_reauthorization_without_calling_x(world: World) -> None:
    bot = await world.add_bot(expires_in=timedelta(seconds=30))
    await world.pool.execute("UPDATE bot_tokens SET refresh_token_enc = NULL WHERE bot_id = $1", bot)

    with pytest.raises(ReauthorizationRequiredError, match="no refresh token stored"):
        await store(world).access_token(bot)

    row = await refresh_row(world, bot)
    assert row["auth_state"] == "needs_reauthorization" and row["refresh_note"] == "no refresh token stored"
    assert world.x.requests_to("token") == []
