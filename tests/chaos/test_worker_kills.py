"""Two worker processes on one task queue; one is SIGKILLed mid-handler, again and again.

Scale 1 (CI): 5 bots, one kill during each of the four handler types. `XBOT_CHAOS_SCALE=10`:
50 bots, ten kills per handler type (the issue's numbers).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import Client

from tests.chaos.conftest import Fakes
from tests.chaos.helpers import (
    WORKER_READY,
    X_TASKS,
    MentionFeed,
    add_bot,
    add_x_round,
    eventually,
    open_executions,
    service_env,
    start_scheduler,
    status,
    stop_and_heal,
    wait_for_log,
    worker_proc,
)
from tests.chaos.infra import Proc, RestartableTemporal, processes
from tests.conftest import TEST_TOKEN_KEY
from xbot.crypto.at_rest import TokenCipher

pytestmark = [pytest.mark.chaos, pytest.mark.system]


@dataclass
class Kill:
    task_type: str
    execution_id: int
    worker: str
    at: float  # epoch seconds


async def _started_on_live_worker(
    pool: asyncpg.Pool, task_type: str, workers: list[Proc]
) -> tuple[int, Proc] | None:
    rows = await pool.fetch(
        "SELECT id, worker_id FROM bot_task_executions WHERE status = 'started' AND task_type = $1",
        task_type,
    )
    by_identity = {f"{w.pid}@": w for w in workers if w.alive()}
    for row in rows:
        for prefix, worker in by_identity.items():
            if (row["worker_id"] or "").startswith(prefix):
                return row["id"], worker
    return None


async def _kill_during(pool: asyncpg.Pool, task_type: str, workers: list[Proc], rng: random.Random) -> Kill:
    """Find an attempt of `task_type` running on a live worker, wait a random moment, SIGKILL it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = await _started_on_live_worker(pool, task_type, workers)
        if found is None:
            await asyncio.sleep(0.02)
            continue
        execution_id, worker = found
        await asyncio.sleep(rng.uniform(0, 0.1))
        still = await pool.fetchval("SELECT status FROM bot_task_executions WHERE id = $1", execution_id)
        if still != "started":
            continue
        at = time.time()
        worker.kill()
        return Kill(task_type, execution_id, worker.name, at)
    raise AssertionError(f"no {task_type} attempt running on a live worker within 60 s")


async def test_killed_workers_lose_no_task_and_answer_every_mention_once(
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
    """Promise: a worker dying at any moment (SIGKILL during any handler) loses nothing. Every due
    task still runs after the kills, every mention is answered exactly once (X counts the posts),
    no definition is deactivated by the kills, and after the schedulers' healing round no
    execution is left `started`."""
    cipher = TokenCipher(TEST_TOKEN_KEY)
    bot_count, kills_per_type = 5 * scale, scale
    accounts = [fakes.x.account(f"k{i}", latency=0.12) for i in range(bot_count)]
    fakes.llm.latency = 0.15
    bots: dict[str, str] = {}
    definitions: list[int] = []
    for account in accounts:
        bot_id = f"kill-{chaos_queue[-6:]}-{account.tag}"
        bots[account.tag] = await add_bot(
            chaos_pool, cipher, account, bot_id, discord_webhook_url=fakes.webhook_url("hook-" + account.tag)
        )
        definitions += (await add_x_round(chaos_pool, bot_id, interval_seconds=3)).values()
    feed = MentionFeed(accounts, rng)
    for account in accounts:
        feed.add(account)
        feed.add(account)

    env = service_env(fakes, chaos_database_url, chaos_temporal.address, chaos_queue, TEST_TOKEN_KEY)
    with processes() as procs:
        workers = [worker_proc(f"worker-{n}", env, tmp_path) for n in (1, 2)]
        procs.extend(workers)
        for worker in workers:
            worker.start()
        for worker in workers:
            await wait_for_log(worker, WORKER_READY)
        for bot_id in bots.values():
            await start_scheduler(chaos_client, bot_id, chaos_queue)

        started = time.time()
        stop_feed = asyncio.Event()
        feeding = asyncio.create_task(feed.run(stop_feed, every=max(0.1, 0.3 / scale)))
        kills: list[Kill] = []
        plan = [t for t in X_TASKS for _ in range(kills_per_type)]
        rng.shuffle(plan)
        try:
            for task_type in plan:
                kill = await _kill_during(chaos_pool, task_type, workers, rng)
                kills.append(kill)
                victim = next(w for w in workers if w.name == kill.worker)
                victim.start()  # the same worker comes back, as a supervisor would restart it
                await wait_for_log(victim, WORKER_READY)
                await asyncio.sleep(rng.uniform(0.2, 1.0))
        finally:
            stop_feed.set()
            await feeding
        last_kill = max(k.at for k in kills)
        print(f"{len(kills)} kills in {time.time() - started:.1f} s: {kills}")

        all_mentions = {m: account for account in accounts for m in feed.mentions[account.tag]}

        async def unanswered() -> list[str]:
            return [m for m, account in all_mentions.items() if account.posts_per_mention[m] < 1]

        try:
            await eventually(unanswered, lambda left: not left, 120, "every mention answered")

            async def idle_definitions() -> list[int]:
                rows = await chaos_pool.fetch(
                    "SELECT DISTINCT task_definition_id FROM bot_task_executions"
                    " WHERE status = 'completed' AND started_at > to_timestamp($1)",
                    last_kill,
                )
                done = {r["task_definition_id"] for r in rows}
                return [d for d in definitions if d not in done]

            await eventually(idle_definitions, lambda left: not left, 60, "every task ran after the kills")
            print(f"caught up {time.time() - last_kill:.1f} s after the last kill")
            await stop_and_heal(chaos_client, list(bots.values()))
            await eventually(
                lambda: open_executions(chaos_pool), lambda rows: not rows, 60, "no open execution"
            )
            # Every bot's scheduler still knows all four of its tasks.
            for bot_id in bots.values():
                tasks = (await status(chaos_client, bot_id)).tasks
                assert sorted(t.taskType for t in tasks) == sorted(X_TASKS)
        except AssertionError:
            print("\n".join(w.tail(3000) for w in workers))
            raise

    # Exactly once: X saw one reply per mention, and the database agrees.
    assert {m: a.posts_per_mention[m] for m, a in all_mentions.items()} == dict.fromkeys(all_mentions, 1)
    for account in accounts:
        assert all(n == 1 for n in account.posts_per_mention.values()), account.posts_per_mention
    replies = await chaos_pool.fetch(
        "SELECT bot_id, in_reply_to_x_post_id, status, posted_x_post_id FROM post_replies"
    )
    assert len(replies) == len(all_mentions)
    assert {r["status"] for r in replies} == {"posted"}
    for reply in replies:
        account = next(a for a in accounts if bots[a.tag] == reply["bot_id"])
        assert [p["id"] for p in account.replies_by_bot(reply["in_reply_to_x_post_id"])] == [
            reply["posted_x_post_id"]
        ]

    # Each kill landed while its attempt ran: that attempt is closed as lost (or had just finished).
    for kill in kills:
        row = await chaos_pool.fetchrow(
            "SELECT status, error_message, extract(epoch FROM completed_at) AS done FROM bot_task_executions"
            " WHERE id = $1",
            kill.execution_id,
        )
        # (A run whose attempts were killed 5 times in a row counts that as one failure and retries.)
        lost_in_a_row = row["status"] in ("retrying", "failed") and "lost in a row" in row["error_message"]
        assert (
            (row["status"] == "lost" and "worker lost" in row["error_message"])
            or lost_in_a_row
            or (row["status"] == "completed" and float(row["done"]) <= kill.at)
        ), (kill, dict(row))
        # Core v2: the lost attempt was started again at once and that run completed.
        if row["status"] != "completed":
            key = await chaos_pool.fetchval(
                "SELECT execution_key FROM bot_task_executions WHERE id = $1", kill.execution_id
            )
            run_prefix = key.rsplit("/", 1)[0] + "/"
            assert (
                await chaos_pool.fetchval(
                    "SELECT count(*) FROM bot_task_executions WHERE starts_with(execution_key, $1)"
                    " AND status = 'completed'",
                    run_prefix,
                )
                == 1
            ), (kill, key)
    # Kills cost nothing but the lost attempts: the only failures are runs killed 5 times in a row,
    # and nothing was deactivated.
    failures = await chaos_pool.fetch(
        "SELECT task_type, error_message FROM bot_task_executions WHERE status IN ('failed', 'retrying')"
    )
    assert all("lost in a row" in f["error_message"] for f in failures), [dict(f) for f in failures]
    assert await chaos_pool.fetchval("SELECT count(*) FROM bot_task_definitions WHERE NOT is_active") == 0
    assert len(kills) == 4 * kills_per_type
