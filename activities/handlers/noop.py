"""`noop`: does nothing (optionally sleeps), for tests, benchmarks and wiring checks."""

from __future__ import annotations

import asyncio
from typing import Any

from activities.handlers.base import HandlerDeps, TaskContext
from xbot.errors import NonRetryableTaskError

MAX_SLEEP_SECONDS = 3600


class NoopHandler:
    """Config: `{"sleep_seconds": <number>}` (optional, default 0)."""

    def __init__(self, deps: HandlerDeps | None = None) -> None:
        self.deps = deps

    async def run(self, ctx: TaskContext) -> dict[str, Any]:
        sleep = ctx.config.get("sleep_seconds", 0)
        if not isinstance(sleep, int | float) or not 0 <= sleep <= MAX_SLEEP_SECONDS:
            raise NonRetryableTaskError(
                f"config.sleep_seconds must be a number from 0 to {MAX_SLEEP_SECONDS}"
            )
        if sleep:
            await asyncio.sleep(sleep)
        return {"slept_seconds": sleep}
