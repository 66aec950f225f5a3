"""A worker killed with SIGKILL after X accepted a reply but before the database knew; a new worker
takes over the retried attempt: the mention is answered exactly once.

Real processes: `python worker.py` against the test database, the Temporal dev server, and the fake
X API served by this test. The fake holds its answer to `POST /2/tweets` after creating the post,
so the kill lands exactly in the gap between X's commit and ours.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.handlers.generate_replies import GenerateRepliesHandler
from activities.handlers.pull_mentions import PullMentionsHandler
from tests.handlers.conftest import World
from tests.handlers.scheduling import add_task, completed_results, start_scheduler
from tests.support.factories import new_bot_id
from tests.support.waiting import eventually

pytestmark = [pytest.mark.devserver, pytest.mark.chaos, pytest.mark.system]

REPO = Path(__file__).resolve().parents[2]
DROPPED_ENV = {"DATABASE_URL", "ENCRYPTION_KEY", "API_TOKEN", "TEMPORAL_API_KEY", "TEMPORAL_TLS"}


def worker_env(world: World, database_url: str, temporal_address: str, task_queue: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in DROPPED_ENV}
    env.update(
        XBOT_ENV="test",
        DATABASE_URL=database_url,
        TEMPORAL_ADDRESS=temporal_address,
        TEMPORAL_NAMESPACE="default",
        TEMPORAL_TASK_QUEUE=task_queue,
        X_API_BASE_URL=world.settings.x_api_base_url,
        X_CLIENT_ID=world.settings.x_client_id or "",
        X_CLIENT_SECRET=world.settings.x_client_secret.get_secret_value()
        if world.settings.x_client_secret
        else "",
        # Longer than the fake holds its answer before the kill: the worker must still be waiting.
        X_REQUEST_TIMEOUT_SECONDS="30",
        OPENAI_BASE_URL=world.settings.openai_base_url or "",
        PYTHONUNBUFFERED="1",
    )
    return env


@contextmanager
def worker_process(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "worker.py"], cwd=REPO, env=env, stdout=log, stderr=log)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)


async def test_reply_is_posted_once_across_a_worker_killed_mid_post(
    world: World, database_url: str, dev_server_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    client = dev_server_env.client
    bot = await world.add_bot(new_bot_id(), x_user_id=world.x.bot_user_id)
    world.x.add_user("2001", "alice")
    mention = world.x.mention("2001", "@helperbot are you there?")
    await PullMentionsHandler(world.deps).run(world.ctx(bot, "pull_mentions"))
    await GenerateRepliesHandler(world.deps).run(world.ctx(bot, "generate_replies"))
    reply_task = await add_task(
        world.pool, bot, "reply_to_mentions", retry_delay_minutes=0.01, timeout_seconds=60
    )
    world.x.hang_seconds = 60.0  # X created the post; its answer never reaches the first worker
    world.x.inject("create_post", "accept_then_hang")
    env = worker_env(world, database_url, client.service_client.config.target_host, task_queue)

    async def reply_state() -> str | None:
        value: str | None = await world.pool.fetchval(
            "SELECT status FROM post_replies WHERE bot_id = $1 AND in_reply_to_x_post_id = $2", bot, mention
        )
        return value

    handle = await start_scheduler(client, bot, task_queue)
    try:
        with worker_process(env, tmp_path / "worker-1.log") as first:
            await eventually(lambda: _value(world.x.posts_per_mention[mention]), lambda n: n == 1)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        assert await reply_state() == "posting"  # the intent, without a result

        with worker_process(env, tmp_path / "worker-2.log"):
            try:
                await eventually(reply_state, lambda state: state == "posted", timeout=90)
            except AssertionError:
                for name in ("worker-1.log", "worker-2.log"):
                    print(name, (tmp_path / name).read_text(errors="replace")[-3000:])
                raise
            results = await eventually(lambda: completed_results(world.pool, reply_task), bool)
    finally:
        await handle.terminate("test finished")

    assert world.x.posts_per_mention[mention] == 1
    assert len(world.x.requests_to("create_post")) == 1
    posted_id = await world.pool.fetchval(
        "SELECT posted_x_post_id FROM post_replies WHERE bot_id = $1 AND in_reply_to_x_post_id = $2",
        bot,
        mention,
    )
    assert [p["id"] for p in world.x.replies_by_bot(mention)] == [posted_id]
    assert results[-1]["replies_recovered"] == 1
    attempts = await world.pool.fetch(
        "SELECT attempt_number, status FROM bot_task_executions WHERE task_definition_id = $1 ORDER BY id",
        reply_task,
    )
    # Core v2: the killed attempt is `lost` (not the task's failure) and started again at once.
    assert [(r["attempt_number"], r["status"]) for r in attempts] == [(1, "lost"), (2, "completed")]


async def _value(value: int) -> int:
    return value
