"""PostgreSQL stops under load (8 s at scale 1; 20 s from `XBOT_CHAOS_SCALE=4`) and comes back."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import websockets
from temporalio.client import Client

from tests.chaos.conftest import Fakes
from tests.chaos.helpers import (
    WORKER_READY,
    MentionFeed,
    add_bot,
    add_x_round,
    api_proc,
    eventually,
    open_executions,
    service_env,
    start_scheduler,
    stop_and_heal,
    wait_for_log,
    worker_proc,
)
from tests.chaos.infra import RestartableTemporal, StoppablePostgres, free_port, processes
from tests.conftest import TEST_TOKEN_KEY
from xbot.crypto.at_rest import TokenCipher

pytestmark = [pytest.mark.chaos, pytest.mark.system]

API_TOKEN = "chaos-api-token-0f3c9a"
# The client gives up after this long: an API that hangs fails the test instead of stalling it.
CLIENT_TIMEOUT = 10.0


async def _probe_api(api: httpx.AsyncClient, ws_url: str, bot: str) -> list[tuple[str, int, Any]]:
    """Every kind of route once: (what, status, body). Raises if one does not answer in time."""
    answers: list[tuple[str, int, Any]] = []
    for method, path, body in (
        ("GET", "/healthz", None),
        ("GET", "/bots", None),
        ("GET", f"/bots/{bot}", None),
        ("GET", f"/bots/{bot}/executions", None),
        ("GET", f"/bots/{bot}/logs", None),
        ("GET", f"/bots/{bot}/status", None),
        ("GET", f"/bots/{bot}/replies", None),
        ("POST", "/bots", {"id": "born-during-outage", "name": "nope"}),
    ):
        response = await api.request(method, path, json=body)
        answers.append((f"{method} {path}", response.status_code, response.json()))
    try:
        async with websockets.connect(ws_url, open_timeout=CLIENT_TIMEOUT):
            answers.append(("WS feed", 101, None))
    except websockets.InvalidStatus as refused:
        answers.append(("WS feed", refused.response.status_code, refused.response.body))
    return answers


async def test_a_database_outage_gives_503s_then_everything_catches_up(
    chaos_postgres: StoppablePostgres,
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
    """Promise: losing PostgreSQL under load loses nothing and hangs nothing. While it is down the
    API answers every route with 503 and an `{error}` body within the client's timeout (the
    WebSocket handshake is refused with 503 too), and writes nothing; task attempts fail and
    Temporal retries them. When it is back, the retried attempts complete, every mention that
    arrived meanwhile is answered exactly once, and no execution is left `started`."""
    outage_seconds = min(20, 8 + 4 * (scale - 1))
    cipher = TokenCipher(TEST_TOKEN_KEY)
    accounts = [fakes.x.account(f"pg{i}", latency=0.05) for i in range(3 * scale)]
    bots = []
    definitions: list[int] = []
    for account in accounts:
        bot = await add_bot(chaos_pool, cipher, account, f"pg-{chaos_queue[-6:]}-{account.tag}")
        bots.append(bot)
        # Retries outlast the outage: ~0.6 s, 1.2 s, then every 3 s, ten times.
        ids = await add_x_round(
            chaos_pool, bot, interval_seconds=2, max_retries=10, max_retry_delay_minutes=0.05
        )
        definitions += ids.values()
    feed = MentionFeed(accounts, rng)
    for account in accounts:
        feed.add(account)

    env = service_env(
        fakes, chaos_database_url, chaos_temporal.address, chaos_queue, TEST_TOKEN_KEY, API_TOKEN=API_TOKEN
    )
    port = free_port()
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    ws_url = f"ws://127.0.0.1:{port}/bots/{bots[0]}/ws?token={API_TOKEN}"
    with processes() as procs:
        worker, api_server = worker_proc("worker", env, tmp_path), api_proc(env, port, tmp_path)
        procs += [worker, api_server]
        worker.start()
        api_server.start()
        await wait_for_log(worker, WORKER_READY)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=CLIENT_TIMEOUT
        ) as api:

            async def api_health() -> int:
                try:
                    return (await api.get("/healthz")).status_code
                except httpx.TransportError:
                    return 0

            await eventually(api_health, lambda code: code == 200, 60, "API up")
            for bot in bots:
                await start_scheduler(chaos_client, bot, chaos_queue)
            stop_feed = asyncio.Event()
            feeding = asyncio.create_task(feed.run(stop_feed, every=0.4))
            await asyncio.sleep(2)  # under load: tasks running, mentions arriving

            during: list[tuple[str, int, Any]] = []
            chaos_postgres.stop()
            down_at = time.time()
            try:
                while time.time() - down_at < outage_seconds:
                    during += await _probe_api(api, ws_url, bots[0])
                    await asyncio.sleep(1)
            finally:
                chaos_postgres.start()
            back_at = time.time()
            stop_feed.set()
            await feeding

            try:
                assert during, "the API was never probed during the outage"
                for what, code, body in during:
                    assert code == 503, (what, code, body)
                    if what != "WS feed":
                        assert isinstance(body, dict) and isinstance(body.get("error"), str), (what, body)
                assert await eventually(api_health, lambda code: code == 200, 30, "API healthy again") == 200
                assert (await api.get("/bots/born-during-outage")).status_code == 404

                mentions = {m: a for a in accounts for m in feed.mentions[a.tag]}

                async def unanswered() -> list[str]:
                    return [m for m, a in mentions.items() if a.posts_per_mention[m] < 1]

                await eventually(unanswered, lambda left: not left, 120, "every mention answered")

                async def not_run_since() -> list[int]:
                    rows = await chaos_pool.fetch(
                        "SELECT DISTINCT task_definition_id FROM bot_task_executions"
                        " WHERE status = 'completed' AND started_at > to_timestamp($1)",
                        back_at,
                    )
                    return sorted(set(definitions) - {r["task_definition_id"] for r in rows})

                await eventually(not_run_since, lambda left: not left, 60, "every task ran after the outage")
                await stop_and_heal(chaos_client, bots)
                await eventually(
                    lambda: open_executions(chaos_pool), lambda r: not r, 60, "no open execution"
                )
            except AssertionError:
                print(worker.tail(5000), api_server.tail(3000))
                raise

    assert all(a.posts_per_mention[m] == 1 for m, a in mentions.items())
    assert all(n == 1 for a in accounts for n in a.posts_per_mention.values())
    replies = await chaos_pool.fetch("SELECT status FROM post_replies")
    assert len(replies) == len(mentions) and {r["status"] for r in replies} == {"posted"}
    # Attempts failed while the database was away and Temporal retried them into success.
    retried = await chaos_pool.fetchval(
        "SELECT count(*) FROM bot_task_executions WHERE status = 'completed' AND attempt_number > 1"
        " AND started_at >= to_timestamp($1)",
        back_at - 1,
    )
    print(
        f"{len(during)} answers during the outage, e.g. {during[:9]}; {retried} attempts retried into success"
    )
    assert retried > 0
    assert await chaos_pool.fetchval("SELECT count(*) FROM bot_task_definitions WHERE NOT is_active") == 0
    assert await chaos_pool.fetchval("SELECT count(*) FROM bots WHERE id = 'born-during-outage'") == 0
