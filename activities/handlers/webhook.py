"""`webhook`: POST `{botId, taskId, taskType, dueAt, attempt}` to `config.url`; non-2xx fails.

The generic task type that lets the scheduler drive work outside X. A 4xx answer is final (the
request will not get better by repeating it) except 408 and 429; 5xx and network errors retry.
The outbound URL policy is applied again moments before the due instant (the API checked it when the
definition was saved, but a host name may resolve elsewhere by now): a refusal is final.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx

from activities.handlers.base import HandlerDeps, TaskContext
from xbot import url_policy
from xbot.errors import NonRetryableTaskError, TaskError

RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})
DEFAULT_TIMEOUT_SECONDS = 30.0
# Set in the context by `prepare` once the URL policy passed (moments before the due instant).
CHECKED = "webhook_url_checked"


class WebhookHandler:
    """Config: `{"url": "https://…", "headers": {...} (optional), "timeout_seconds": 30 (optional)}`."""

    def __init__(self, deps: HandlerDeps, resolver: url_policy.Resolver | None = None) -> None:
        self.http = deps.http
        self.allow_private_urls = deps.settings.allow_private_urls
        self.resolver = resolver

    async def prepare(self, ctx: TaskContext) -> None:
        """Before the due instant: the config is checked and the URL policy applied (a DNS lookup),
        so that at the instant only the request is left."""
        await self._check(ctx)
        ctx.extra[CHECKED] = True

    async def _check(self, ctx: TaskContext) -> tuple[str, dict[str, str], float]:
        url = ctx.config.get("url")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise NonRetryableTaskError("config.url must be an http(s) URL")
        headers = ctx.config.get("headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise NonRetryableTaskError("config.headers must map header names to strings")
        timeout = ctx.config.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS)
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise NonRetryableTaskError("config.timeout_seconds must be a positive number")
        if not ctx.extra.get(CHECKED):
            try:
                await url_policy.check_url(url, allow_private=self.allow_private_urls, resolver=self.resolver)
            except url_policy.UrlPolicyError as error:
                if error.retryable:  # e.g. a passing DNS failure
                    raise TaskError(f"webhook URL {error}") from None
                raise NonRetryableTaskError(
                    f"webhook URL refused by the outbound URL policy: {error}"
                ) from None
        return url, headers, float(timeout)

    async def run(self, ctx: TaskContext) -> dict[str, Any]:
        url, headers, timeout = await self._check(ctx)
        body = {
            "botId": ctx.bot_id,
            "taskId": ctx.task_id,
            "taskType": ctx.task_type,
            "dueAt": ctx.due_at.isoformat(),
            "attempt": ctx.attempt,
        }
        try:
            response = await self.http.post(url, json=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as error:
            # The URL may carry a token in its query: name only the host.
            raise TaskError(f"webhook to {urlsplit(url).netloc} failed: {type(error).__name__}") from None
        status = response.status_code
        if 200 <= status < 300:
            return {"status": status}
        message = f"webhook to {urlsplit(url).netloc} answered HTTP {status}"
        if 400 <= status < 500 and status not in RETRYABLE_CLIENT_ERRORS:
            raise NonRetryableTaskError(message)
        raise TaskError(message)
