"""Discord webhook messages: what a reply notice says, and one delivery attempt, classified.

Retrying is the outbox's business (`xbot.outbox`): this module sends once and says what happened.
Discord answers 429 with `retry_after` (seconds, a float) in the JSON body and a `Retry-After` header;
webhooks are not under the global limit but have per-webhook buckets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

MAX_CONTENT = 2000  # Discord's limit for `content`
DEFAULT_TIMEOUT_SECONDS = 10.0
# When a 429 says nothing usable about when to come back.
DEFAULT_RETRY_AFTER_SECONDS = 1.0


@dataclass(frozen=True)
class ReplyNotice:
    bot_name: str
    mention_author: str | None
    mention_post_id: str
    reply_text: str
    reply_post_id: str | None


def render(notice: ReplyNotice) -> str:
    who = f"@{notice.mention_author}" if notice.mention_author else "a mention"
    link = (
        f"https://x.com/i/web/status/{notice.reply_post_id}" if notice.reply_post_id else "(post id unknown)"
    )
    content = f"**{notice.bot_name}** replied to {who} (post {notice.mention_post_id}): {link}\n>>> {notice.reply_text}"
    return content[:MAX_CONTENT]


def message(notice: ReplyNotice) -> dict[str, Any]:
    """The webhook's JSON body; mentions in the reply text never ping anyone."""
    return {"content": render(notice), "allowed_mentions": {"parse": []}}


@dataclass(frozen=True)
class Delivered:
    status: int


@dataclass(frozen=True)
class RateLimited:
    retry_after_seconds: float


@dataclass(frozen=True)
class Unavailable:
    """5xx, timeout, connection error: worth retrying later."""

    reason: str


@dataclass(frozen=True)
class Refused:
    """Any other 4xx (bad payload, webhook deleted, bad token): repeating it cannot help."""

    reason: str


Outcome = Delivered | RateLimited | Unavailable | Refused


def retry_after_seconds(response: httpx.Response) -> float:
    """Seconds to wait after a 429: the body's `retry_after`, else `Retry-After` (seconds or a date)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        value = body.get("retry_after")
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
    header = response.headers.get("retry-after")
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
        try:
            return max(0.0, (parsedate_to_datetime(header) - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            pass
    return DEFAULT_RETRY_AFTER_SECONDS


async def deliver(
    http: httpx.AsyncClient,
    webhook_url: str,
    payload: dict[str, Any],
    *,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> Outcome:
    """One POST to the webhook. Never raises for a delivery failure; reasons never carry the URL."""
    try:
        response = await http.post(webhook_url, json=payload, timeout=timeout_seconds)
    except httpx.HTTPError as error:
        # The webhook URL embeds its secret token: name the error type only.
        return Unavailable(f"{type(error).__name__} reaching Discord")
    status = response.status_code
    if 200 <= status < 300:
        return Delivered(status)
    if status == 429:
        return RateLimited(retry_after_seconds(response))
    if status >= 500 or status == 408:
        return Unavailable(f"Discord answered HTTP {status}")
    return Refused(f"Discord refused the message: HTTP {status}")
