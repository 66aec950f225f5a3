"""`send_notifications`: drain the bot's notifications outbox (Discord), retries included.

reply_to_mentions already sends its notifications right after posting; this task type delivers what
is left for later (a long 429 retry_after, a Discord outage's backoff) without a process of its own.
Schedule it every minute or so on bots with a Discord webhook. Messages that fail are recorded on their
outbox row and logged; the task itself fails only when the outbox cannot be read.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from activities.handlers.base import HandlerDeps, TaskContext
from activities.handlers.x_support import float_config, int_config
from xbot import outbox
from xbot.storage.logs import LogLevel, write_log


class SendNotificationsHandler:
    """Config: `{"max_messages": 50, "max_seconds": 60}` (optional): the drain's bounds."""

    def __init__(self, deps: HandlerDeps) -> None:
        self.deps = deps

    async def run(self, ctx: TaskContext) -> dict[str, Any]:
        max_messages = int_config(ctx, "max_messages", 50, 1, 1000)
        max_seconds = float_config(ctx, "max_seconds", 60.0, 1.0, 3600.0)
        sender = outbox.OutboxSender.for_settings(self.deps.pool, self.deps.http, self.deps.settings)
        report = await sender.drain(ctx.bot_id, max_messages=max_messages, max_seconds=max_seconds)
        for event in report.events:
            if event.outcome != "sent":
                await self._log(ctx, "warn" if event.outcome == "retrying" else "error", event)
        return report.counts()

    async def _log(self, ctx: TaskContext, level: LogLevel, event: outbox.OutboxEvent) -> None:
        line, context = outbox.describe(event), outbox.event_context(event)
        try:
            await write_log(self.deps.pool, ctx.bot_id, level, line, context, ctx.execution_id or None)
        except asyncpg.ForeignKeyViolationError:  # execution row not written (yet): keep the log line
            await write_log(self.deps.pool, ctx.bot_id, level, line, context, None)
