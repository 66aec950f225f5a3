"""The Temporal worker process: the BotScheduler workflow and every activity it runs."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
from temporalio.client import Client
from temporalio.worker import Worker

from activities.handlers.base import HandlerDeps, TaskHandler
from activities.handlers.registry import build_handlers
from activities.scheduler import SchedulerActivities
from activities.task_runner import TaskRunner
from workflows.bot_scheduler import BotScheduler
from xbot.bots import encrypt_plain_webhook_urls
from xbot.crypto import cipher_from_settings
from xbot.db import create_pool, resolve_database_url
from xbot.migrate import migrate
from xbot.settings import Settings
from xbot.temporal import connect_temporal, ensure_search_attributes

log = logging.getLogger(__name__)

# Running task attempts get this long to finish when the worker is asked to stop; the rest are
# cancelled, recorded as interrupted, and retried by Temporal on another worker.
GRACEFUL_SHUTDOWN = timedelta(seconds=10)
# Connections: handlers' queries plus one per task holding an advisory lock.
POOL_SIZE = 20


def build_worker(
    client: Client,
    pool: asyncpg.Pool,
    settings: Settings,
    task_queue: str,
    http: httpx.AsyncClient,
    handlers: Mapping[str, TaskHandler] | None = None,
    **worker_options: Any,
) -> Worker:
    """A worker for `task_queue`.

    `handlers` replaces the registry's (tests register their own); `worker_options` go to
    `temporalio.worker.Worker` (e.g. `max_cached_workflows`).
    """
    identity = client.identity
    task_handlers = handlers if handlers is not None else build_handlers(HandlerDeps(pool, settings, http))
    scheduler = SchedulerActivities(pool, settings, identity)
    runner = TaskRunner(pool, settings, task_handlers, identity)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[BotScheduler],
        activities=[
            scheduler.load_bot_plan,
            scheduler.record_skipped_run,
            scheduler.set_task_paused,
            scheduler.settle_lost_run,
            runner.run_bot_task,
        ],
        **{"graceful_shutdown_timeout": GRACEFUL_SHUTDOWN, **worker_options},
    )


async def run_worker(settings: Settings) -> None:
    """Migrate, connect, and run the worker until SIGINT or SIGTERM, then shut down gracefully."""
    database_url = resolve_database_url(settings)
    applied = await migrate(database_url)
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    pool = await create_pool(database_url, max_size=POOL_SIZE)
    try:
        if settings.token_encryption_key is not None:
            # Webhook URLs stored in plain text before migration 0006 are encrypted now.
            await encrypt_plain_webhook_urls(pool, cipher_from_settings(settings))
        client = await connect_temporal(settings)
        try:
            await ensure_search_attributes(client)
        except Exception as error:  # e.g. no operator permission on a managed namespace
            log.warning("could not check the custom search attributes: %s", error)
        async with httpx.AsyncClient(timeout=settings.x_request_timeout_seconds) as http:
            worker = build_worker(client, pool, settings, settings.temporal_task_queue, http)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            log.info(
                "worker polling task queue %s on %s", settings.temporal_task_queue, settings.temporal_address
            )
            async with worker:
                await stop.wait()
                log.info("shutting down: waiting up to %s for running tasks", GRACEFUL_SHUTDOWN)
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
    finally:
        await pool.close()
    log.info("worker stopped")
