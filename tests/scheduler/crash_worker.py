"""A worker process whose `hang` task never finishes: the crash-healing test kills it with SIGKILL.

Usage: python -m tests.scheduler.crash_worker <temporal address> <task queue> <database url>
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import httpx
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from activities.handlers.base import TaskContext
from launch.worker import build_worker
from xbot.settings import load_settings
from xbot.storage.pool import create_pool


class Hang:
    async def run(self, ctx: TaskContext) -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {}


async def main(address: str, task_queue: str, database_url: str) -> None:
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    pool = await create_pool(database_url)
    async with httpx.AsyncClient() as http:
        # No workflow cache: after the kill, workflow tasks must not wait on this worker's sticky queue.
        worker = build_worker(
            client, pool, load_settings(), task_queue, http, handlers={"hang": Hang()}, max_cached_workflows=0
        )
        async with worker:
            print("ready", flush=True)
            await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
