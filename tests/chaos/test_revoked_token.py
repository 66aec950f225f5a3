"""One bot's X authorization is revoked in the middle of a run; its neighbours keep working."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import Client

from tests.chaos.conftest import Fakes
from tests.chaos.helpers import (
    WORKER_READY,
    MentionFeed,
    add_bot,
    add_x_round,
    eventually,
    open_executions,
    service_env,
    start_scheduler,
    stop_and_heal,
    wait_for_log,
    worker_proc,
)
from tests.chaos.infra import RestartableTemporal, processes
from tests.conftest import TEST_TOKEN_KEY
from xbot.crypto.at_rest import TokenCipher
from xbot.x.tokens import store_tokens

pytestmark = [pytest.mark.chaos, pytest.mark.system]


async def test_a_revoked_refresh_token_parks_one_bot_and_spares_the_others(
    chaos_pool: asyncpg.Pool,
    chaos_database_url: str,
    chaos_temporal: RestartableTemporal,
    chaos_client: Client,
    chaos_queue: str,
    fakes: Fakes,
    scale: int,
    rng: random.Random,
    tmp_path: Path,
) -> None:
    """Promise: when X revokes a bot's tokens (the refresh answers `invalid_grant`), that bot is
    marked `needs_reauthorization` with a log line after exactly one refresh attempt, its X tasks
    fail without retries and without calling X again, and every other bot keeps completing its
    tasks (including its own, successful, token refreshes) and answering its mentions. New tokens
    stored for the parked bot put it back to work."""
    cipher = TokenCipher(TEST_TOKEN_KEY)
    accounts = [fakes.x.account(f"rv{i}", latency=0.02) for i in range(3 * scale)]
    victim, others = accounts[0], accounts[1:]
    bots: dict[str, str] = {}
    definitions: dict[str, list[int]] = {}
    for account in accounts:
        # The others' access tokens expire within the refresh margin: they refresh on first use.
        lifetime = timedelta(hours=2) if account is victim else timedelta(seconds=30)
        bot = await add_bot(
            chaos_pool, cipher, account, f"rv-{chaos_queue[-6:]}-{account.tag}", token_lifetime=lifetime
        )
        bots[account.tag] = bot
        ids = await add_x_round(chaos_pool, bot, interval_seconds=2, error_threshold=1000)
        definitions[account.tag] = list(ids.values())
    feed = MentionFeed(accounts, rng)
    for account in accounts:
        feed.add(account)

    env = service_env(fakes, chaos_database_url, chaos_temporal.address, chaos_queue, TEST_TOKEN_KEY)
    victim_bot = bots[victim.tag]

    async def auth_state() -> str:
        value: str = await chaos_pool.fetchval("SELECT auth_state FROM bots WHERE id = $1", victim_bot)
        return value

    async def completed_since(since: float, tags: list[str]) -> set[int]:
        rows = await chaos_pool.fetch(
            "SELECT DISTINCT task_definition_id FROM bot_task_executions"
            " WHERE status = 'completed' AND started_at > to_timestamp($1) AND task_definition_id = ANY($2)",
            since,
            [d for tag in tags for d in definitions[tag]],
        )
        return {r["task_definition_id"] for r in rows}

    with processes() as procs:
        worker = worker_proc("worker", env, tmp_path)
        procs.append(worker)
        worker.start()
        await wait_for_log(worker, WORKER_READY)
        for bot in bots.values():
            await start_scheduler(chaos_client, bot, chaos_queue)
        stop_feed = asyncio.Event()
        feeding = asyncio.create_task(feed.run(stop_feed, every=0.5))
        try:
            everyone = [a.tag for a in accounts]
            all_ids = {d for tag in everyone for d in definitions[tag]}
            start = time.time() - 1
            await eventually(
                lambda: completed_since(start, everyone), lambda done: done == all_ids, 60, "warm up"
            )

            fakes.x.revoke(victim.tag)
            revoked_at = time.time()
            await eventually(auth_state, lambda state: state == "needs_reauthorization", 30, "victim parked")
            parked_at = time.time()
            others_ids = {d for a in others for d in definitions[a.tag]}
            await eventually(
                lambda: completed_since(parked_at, [a.tag for a in others]),
                lambda done: done == others_ids,
                60,
                "the other bots keep working",
            )
            await asyncio.sleep(2)  # the parked bot's tasks keep coming due meanwhile
            victim_calls = [status for tag, status in fakes.x.token_calls if tag == victim.tag]
            victim_401s = [at for bearer, at in fakes.x.refused_bearers if bearer in victim.issued]

            # An operator authorizes the bot again: it goes back to work.
            access, refresh = victim.issue_tokens()
            await store_tokens(
                chaos_pool, cipher, victim_bot, access, refresh, datetime.now(UTC) + timedelta(hours=2)
            )
            restored_at = time.time()
            await eventually(
                lambda: completed_since(restored_at, [victim.tag]),
                lambda done: done == set(definitions[victim.tag]),
                60,
                "the re-authorized bot works again",
            )
        except AssertionError:
            print(worker.tail(5000))
            raise
        finally:
            stop_feed.set()
            await feeding
        await stop_and_heal(chaos_client, list(bots.values()))
        await eventually(lambda: open_executions(chaos_pool), lambda rows: not rows, 30, "no open execution")

    # One refresh attempt, refused; the revoked token was refused (once per request then in flight,
    # one unless two of the bot's tasks were mid-request) and never sent to X once the bot was parked.
    assert victim_calls == [400], victim_calls
    assert 1 <= len(victim_401s) <= len(definitions[victim.tag]), victim_401s
    assert all(at < parked_at for at in victim_401s), (victim_401s, parked_at)
    # Its X tasks failed at once (no retries), saying why.
    failed = await chaos_pool.fetch(
        "SELECT task_type, attempt_number, status, error_message FROM bot_task_executions"
        " WHERE bot_id = $1 AND started_at BETWEEN to_timestamp($2) AND to_timestamp($3)"
        # Occurrences a busy machine's scheduler reached too late have `skipped` rows of their own.
        " AND status <> 'completed' AND NOT (status = 'skipped' AND error_message LIKE 'not run: missed:%')",
        victim_bot,
        revoked_at,
        restored_at,
    )
    assert failed, "the parked bot's tasks kept coming due and were refused"
    for row in failed:
        assert row["status"] == "failed" and row["attempt_number"] == 1, dict(row)
        assert "needs re-authorization" in row["error_message"], dict(row)
    log = await chaos_pool.fetchval(
        "SELECT content FROM logs WHERE bot_id = $1 AND context->>'event' = 'needs_reauthorization'",
        victim_bot,
    )
    assert log is not None and "invalid_grant" in log
    # The others refreshed their tokens successfully and stayed authorized.
    for account in others:
        assert [s for tag, s in fakes.x.token_calls if tag == account.tag] == [200]
    states = await chaos_pool.fetch("SELECT id, auth_state FROM bots")
    assert {r["auth_state"] for r in states} == {"ok"}
    assert all(n == 1 for a in accounts for n in a.posts_per_mention.values())
