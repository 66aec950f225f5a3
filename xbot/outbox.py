"""The notifications outbox: Discord notices queued in PostgreSQL, sent and retried by whoever drains.

Enqueueing (`enqueue_reply_notice`) happens right after a reply is recorded as posted and is unique per
(kind, reply): a reply_to_mentions run repeated by Temporal, or run twice, queues one message.

Sending (`OutboxSender.drain`) claims one due message at a time with `FOR UPDATE SKIP LOCKED`, keeps the
row locked across the POST (two drainers never send the same message), and records the outcome in the
same transaction:
- 2xx: `sent` (and the reply's `discord_notified_at`);
- 429: tried again after Discord's `retry_after`; the bot's other pending messages wait too (one bucket);
- 5xx, timeout, connection error: tried again with exponential backoff, `failed` after `max_failures`;
- any other 4xx, a URL the outbound URL policy refuses, a bot without a webhook: `failed` at once.
`last_error` says why. A process dying after Discord accepted a message and before the commit sends it
again when the lock is released: Discord's webhooks take no idempotency key.

The sender has no process of its own: reply_to_mentions drains its bot's outbox after posting, and the
`send_notifications` task type drains on its schedule (it delivers retries when no reply is posted).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import asyncpg
import httpx

from xbot import discord, url_policy
from xbot.crypto.at_rest import TokenCipher, TokenCipherError
from xbot.settings import Settings
from xbot.storage import outbox as outbox_rows
from xbot.storage import replies

KIND_DISCORD_REPLY = "discord_reply"


@dataclass(frozen=True)
class RetryPolicy:
    base_delay_seconds: float = 10.0
    max_delay_seconds: float = 1800.0
    # Failed tries (5xx, network) before the message is given up: about 70 minutes with the defaults.
    max_failures: int = 10
    # Every try, 429s included: a webhook rate limited for ever still ends.
    max_attempts: int = 50
    # Discord has answered retry_after of days; the message waits at most this long per 429.
    max_retry_after_seconds: float = 3600.0

    def backoff_seconds(self, failures: int) -> float:
        return float(min(self.base_delay_seconds * 2 ** max(failures - 1, 0), self.max_delay_seconds))


@dataclass(frozen=True)
class OutboxEvent:
    """What happened to one message in a drain (for the bot's log rows; no text, no URL)."""

    reply_id: int
    outcome: Literal["sent", "retrying", "failed"]
    reason: str | None = None
    retry_at: datetime | None = None


@dataclass
class DrainReport:
    events: list[OutboxEvent] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(event.outcome == outcome for event in self.events)

    def counts(self) -> dict[str, int]:
        return {
            "notifications_sent": self.count("sent"),
            "notifications_retrying": self.count("retrying"),
            "notifications_failed": self.count("failed"),
        }


async def enqueue_reply_notice(
    db: asyncpg.Pool | asyncpg.Connection, bot_id: str, reply_id: int, notice: discord.ReplyNotice
) -> bool:
    """Queue the reply's notification; False when it is already queued or the bot has no webhook."""
    return await outbox_rows.enqueue(db, bot_id, KIND_DISCORD_REPLY, reply_id, discord.message(notice))


class _NotSendable(Exception):
    def __init__(self, outcome: discord.Outcome) -> None:
        self.outcome = outcome


class OutboxSender:
    def __init__(
        self,
        pool: asyncpg.Pool,
        http: httpx.AsyncClient,
        cipher: TokenCipher | None,
        *,
        allow_private_urls: bool,
        policy: RetryPolicy | None = None,
        resolver: url_policy.Resolver | None = None,
        timeout_seconds: float = discord.DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.pool = pool
        self.http = http
        self.cipher = cipher
        self.allow_private_urls = allow_private_urls
        self.policy = policy or RetryPolicy()
        self.resolver = resolver
        self.timeout_seconds = timeout_seconds

    @classmethod
    def for_settings(cls, pool: asyncpg.Pool, http: httpx.AsyncClient, settings: Settings) -> OutboxSender:
        key = settings.token_encryption_key
        cipher = TokenCipher(key.get_secret_value()) if key is not None else None
        return cls(pool, http, cipher, allow_private_urls=settings.allow_private_urls)

    async def drain(
        self,
        bot_id: str,
        *,
        max_messages: int = 50,
        max_seconds: float = 30.0,
        max_wait_seconds: float = 3.0,
    ) -> DrainReport:
        """Send the bot's due messages, one attempt each; when none is due, wait for the next one if it
        is due within `max_wait_seconds` (a short retry_after) and the time budget allows."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_seconds
        report = DrainReport()
        while len(report.events) < max_messages and loop.time() < deadline:
            event = await self._send_next(bot_id)
            if event is not None:
                report.events.append(event)
                continue
            # The next message no other drainer holds (it sends those): due now, or in `wait` seconds.
            wait = await outbox_rows.seconds_to_next(self.pool, bot_id)
            if wait is None or wait > max_wait_seconds or loop.time() + wait > deadline:
                break
            await asyncio.sleep(max(wait, 0.0))
        return report

    async def _send_next(self, bot_id: str) -> OutboxEvent | None:
        async with self.pool.acquire() as connection, connection.transaction():
            row = await outbox_rows.claim_next(connection, bot_id)
            if row is None:
                return None
            try:
                url = self._webhook_url(row)
                await url_policy.check_url(url, allow_private=self.allow_private_urls, resolver=self.resolver)
                outcome = await discord.deliver(
                    self.http, url, row.payload, timeout_seconds=self.timeout_seconds
                )
            except _NotSendable as refusal:
                outcome = refusal.outcome
            except url_policy.UrlPolicyError as error:  # checked again here: DNS may have changed
                outcome = (
                    discord.Unavailable(f"webhook URL {error}")
                    if error.retryable
                    else discord.Refused(f"webhook URL refused by the outbound URL policy: {error}")
                )
            return await self._record(connection, bot_id, row, outcome)

    def _webhook_url(self, row: outbox_rows.ClaimedMessage) -> str:
        encrypted = row.discord_webhook_url_enc
        if encrypted is None:
            plain = row.discord_webhook_url  # not yet encrypted at start (an old row)
            if plain is None:
                raise _NotSendable(discord.Refused("the bot has no Discord webhook URL any more"))
            return plain
        if self.cipher is None:
            raise _NotSendable(
                discord.Unavailable("TOKEN_ENCRYPTION_KEY is not set: the webhook URL cannot be read")
            )
        try:
            return self.cipher.decrypt(encrypted)
        except TokenCipherError:
            raise _NotSendable(
                discord.Unavailable("the webhook URL cannot be decrypted with TOKEN_ENCRYPTION_KEY")
            ) from None

    async def _record(
        self,
        connection: asyncpg.Connection,
        bot_id: str,
        row: outbox_rows.ClaimedMessage,
        outcome: discord.Outcome,
    ) -> OutboxEvent:
        message_id, reply_id = row.id, row.reply_id
        attempts, failures = row.attempts + 1, row.failures
        if isinstance(outcome, discord.Delivered):
            await outbox_rows.mark_sent(connection, message_id, attempts)
            await replies.mark_discord_notified(connection, reply_id)
            return OutboxEvent(reply_id, "sent")
        delay: float | None = None  # None: final
        if isinstance(outcome, discord.RateLimited):
            delay = min(outcome.retry_after_seconds, self.policy.max_retry_after_seconds)
            reason = f"rate limited by Discord (retry after {outcome.retry_after_seconds:g} s)"
        elif isinstance(outcome, discord.Unavailable):
            failures += 1
            reason = outcome.reason
            if failures >= self.policy.max_failures:
                reason = f"{reason}; gave up after {failures} failed attempts"
            else:
                delay = self.policy.backoff_seconds(failures)
        else:
            reason = outcome.reason
        if delay is not None and attempts >= self.policy.max_attempts:
            delay, reason = None, f"{reason}; gave up after {attempts} attempts"
        if delay is None:
            await outbox_rows.mark_failed(connection, message_id, attempts, failures, reason)
            return OutboxEvent(reply_id, "failed", reason)
        # From now, not from the transaction's start: retry_after counts from Discord's answer.
        retry_at = await outbox_rows.schedule_retry(connection, message_id, attempts, failures, reason, delay)
        if isinstance(outcome, discord.RateLimited):
            # The bucket is the webhook's: the bot's other messages would only meet another 429.
            await outbox_rows.hold_others_until(connection, bot_id, message_id, retry_at)
        return OutboxEvent(reply_id, "retrying", reason, retry_at)


def describe(event: OutboxEvent) -> str:
    """One log line for a message that was not sent."""
    if event.outcome == "retrying":
        when = event.retry_at.isoformat() if event.retry_at else "later"
        return f"Discord notification for reply {event.reply_id} will be retried at {when}: {event.reason}"
    return f"Discord notification for reply {event.reply_id} failed: {event.reason}"


def event_context(event: OutboxEvent) -> dict[str, Any]:
    return {"reply_id": event.reply_id, "notification": event.outcome}
