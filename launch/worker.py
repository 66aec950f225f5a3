"""The Temporal worker process: the BotScheduler workflow and every activity it runs."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.bookkeeping import SchedulerActivities
from activities.handlers.base import HandlerDeps, TaskHandler
from activities.handlers.registry import build_handlers
from activities.legacy_v1.scheduler import LegacySchedulerActivities
from activities.legacy_v1.task_runner import LegacyTaskRunner
from activities.task_runner import TaskRunner
from workflows.bot_scheduler import BotScheduler
from xbot.bots import encrypt_plain_webhook_urls
from xbot.crypto.at_rest import cipher_from_settings
from xbot.settings import Settings
from xbot.storage.migrate import migrate
from xbot.storage.pool import create_pool, resolve_database_url
from xbot.temporal import connect_temporal, ensure_search_attributes
from xbot.x.tokens import drain_refreshes

log = logging.getLogger(__name__)

# Running task attempts get this long to finish when the worker is asked to stop; the rest are
# cancelled, recorded as lost, and started again at once by the workflow on another worker.
GRACEFUL_SHUTDOWN = timedelta(seconds=10)
# After a worker dies, its bots' workflow tasks wait this long on its sticky queue before any
# worker may take them: short, so a replacement resumes the bots within seconds.
STICKY_QUEUE_TIMEOUT = timedelta(seconds=3)


# The workflow's own modules and its model libraries are deterministic and keep no mutable module
# state, so the sandbox imports them once instead of re-running them for every workflow it
# replays: a replacement worker replaying a fleet after a crash spends its time on histories.
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("workflows", "pydantic", "croniter")
)


def pool_sizes(concurrency: int) -> tuple[int, int]:
    """(main pool, lock pool) for a worker running `concurrency` activities at once.

    Every attempt holding a lock_key pins one lock-pool connection, so the lock pool has one per
    activity slot and the main pool (bookkeeping and handlers) is never pinned by lock holders.
    """
    return concurrency + 10, concurrency


def build_worker(
    client: Client,
    pool: asyncpg.Pool,
    settings: Settings,
    task_queue: str,
    http: httpx.AsyncClient,
    handlers: Mapping[str, TaskHandler] | None = None,
    lock_pool: asyncpg.Pool | None = None,
    **worker_options: Any,
) -> Worker:
    """A worker for `task_queue`.

    `handlers` replaces the registry's (tests register their own); `worker_options` go to
    `temporalio.worker.Worker` (e.g. `max_cached_workflows`).
    """
    identity = client.identity
    task_handlers = handlers if handlers is not None else build_handlers(HandlerDeps(pool, settings, http))
    scheduler = SchedulerActivities(pool, settings, identity)
    runner = TaskRunner(pool, settings, task_handlers, identity, lock_pool=lock_pool)
    legacy = LegacySchedulerActivities(pool, settings, identity)
    legacy_runner = LegacyTaskRunner(pool, settings, task_handlers, identity)
    defaults: dict[str, Any] = {
        "graceful_shutdown_timeout": GRACEFUL_SHUTDOWN,
        "sticky_queue_schedule_to_start_timeout": STICKY_QUEUE_TIMEOUT,
        "max_concurrent_activities": settings.worker_concurrency,
        "workflow_runner": WORKFLOW_RUNNER,
    }
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[BotScheduler],
        activities=[
            scheduler.load_bot_plan,
            scheduler.set_task_paused,
            scheduler.record_skipped_occurrence,
            scheduler.settle_task_attempt,
            runner.run_task_attempt,
            # Only runs that began before scheduler core v2 call these (see workflows/legacy_v1).
            legacy.record_skipped_run,
            legacy.settle_lost_run,
            legacy_runner.run_bot_task,
        ],
        **{**defaults, **worker_options},
    )


async def run_worker(settings: Settings) -> None:
    """Migrate, connect, and run the worker until SIGINT or SIGTERM, then shut down gracefully."""
    database_url = resolve_database_url(settings)
    applied = await migrate(database_url)
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    main_size, lock_size = pool_sizes(settings.worker_concurrency)
    pool = await create_pool(database_url, max_size=main_size)
    lock_pool = await create_pool(database_url, min_size=0, max_size=lock_size, command_timeout=None)
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
            worker = build_worker(
                client, pool, settings, settings.temporal_task_queue, http, lock_pool=lock_pool
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            log.info(
                "worker polling task queue %s on %s", settings.temporal_task_queue, settings.temporal_address
            )
            # What start-up created lives as long as the process: kept out of every later garbage
            # collection, whose full passes would otherwise walk it all (CPU, and pauses at due instants).
            gc.collect()
            gc.freeze()
            # Workflow activations run on threads that hold the GIL; a due attempt waiting on the
            # event loop gets it back within 1 ms instead of Python's default 5 ms switch interval.
            sys.setswitchinterval(0.001)
            async with worker:
                await stop.wait()
                log.info("shutting down: waiting up to %s for running tasks", GRACEFUL_SHUTDOWN)
            # A refresh whose activity was cancelled may still be saving X's new pair: let it finish.
            await drain_refreshes(timeout=2 * settings.x_request_timeout_seconds + 10)
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
    finally:
        await lock_pool.close()
        await pool.close()
    log.info("worker stopped")
