"""Discord webhook notifications. Best effort: a failure is reported, never raised."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx

log = logging.getLogger(__name__)

MAX_CONTENT = 2000  # Discord's limit for `content`
DEFAULT_TIMEOUT_SECONDS = 10.0


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


async def notify_reply(
    http: httpx.AsyncClient,
    webhook_url: str,
    notice: ReplyNotice,
    *,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> bool:
    """Send the notice; True when Discord accepted it. Never raises for a delivery failure."""
    payload = {"content": render(notice), "allowed_mentions": {"parse": []}}
    try:
        response = await http.post(webhook_url, json=payload, timeout=timeout_seconds)
    except httpx.HTTPError as error:
        # The webhook URL embeds its secret token: name the error type only.
        log.warning("Discord notification failed: %s", type(error).__name__)
        return False
    if response.status_code >= 300:
        log.warning("Discord notification refused: HTTP %d", response.status_code)
        return False
    return True
