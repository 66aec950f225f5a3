"""Typed errors of the X API client.

Messages carry the endpoint, the HTTP status and X's own error text, never a token or a request
header. Retryable errors are plain `TaskError`s; the ones retrying cannot fix are
`NonRetryableTaskError`s; an exhausted window is a `RateLimitedError` (the runner postpones).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from xbot.errors import NonRetryableTaskError, RateLimitedError, TaskError

# Legacy v1.1 code X still reports for "Status is a duplicate".
DUPLICATE_CONTENT_CODE = 187
_MAX_DETAIL = 300


class XApiError(TaskError):
    """Any failure talking to X; `status` is None when no response arrived."""

    def __init__(self, endpoint: str, message: str, status: int | None = None) -> None:
        super().__init__(f"X {endpoint}: {message}")
        self.endpoint = endpoint
        self.status = status


class XTransientError(XApiError):
    """5xx, timeouts, connection failures, malformed bodies: retrying may help."""


class XTimeoutError(XTransientError):
    pass


class XServerError(XTransientError):
    pass


class XMalformedResponseError(XTransientError):
    pass


class XClientError(XApiError, NonRetryableTaskError):
    """A 4xx X will keep refusing; `details` is X's error payload, trimmed."""

    def __init__(self, endpoint: str, status: int, details: str, codes: tuple[int, ...] = ()) -> None:
        super().__init__(endpoint, f"HTTP {status}: {details}", status)
        self.details = details
        self.codes = codes


class XBadRequestError(XClientError):
    pass


class XForbiddenError(XClientError):
    pass


class XNotFoundError(XClientError):
    pass


class XDuplicateContentError(XClientError):
    """X refused a post as duplicate content: the same reply already went out."""


class XUnauthorizedError(XApiError, NonRetryableTaskError):
    """A 401 that survived a token refresh."""


class ReauthorizationRequiredError(NonRetryableTaskError):
    """The bot's refresh token is gone or revoked; an operator must authorize the bot again."""

    def __init__(self, bot_id: str, reason: str) -> None:
        super().__init__(f"bot {bot_id} needs re-authorization: {reason}")
        self.bot_id = bot_id
        self.reason = reason


class XRateLimitedError(RateLimitedError):
    """429 from X, or a request not sent because the window is known to be exhausted."""

    def __init__(self, endpoint: str, reset_at: datetime, *, sent: bool, reason: str | None = None) -> None:
        how = "X answered 429" if sent else "not sent, window exhausted"
        why = f" ({reason})" if reason else ""
        super().__init__(endpoint, reset_at, f"X {endpoint}: {how}{why}; resets at {reset_at.isoformat()}")
        self.sent = sent
        self.reason = reason


def describe_error_body(body: Any) -> tuple[str, tuple[int, ...]]:
    """X's error text and numeric codes from a v2 problem or a v1.1 `errors` list."""
    parts: list[str] = []
    codes: list[int] = []
    if isinstance(body, dict):
        for key in ("title", "detail"):
            if isinstance(body.get(key), str):
                parts.append(body[key])
        errors = body.get("errors")
        if isinstance(errors, list):
            for item in errors[:5]:
                if not isinstance(item, dict):
                    continue
                if isinstance(item.get("code"), int):
                    codes.append(item["code"])
                text = item.get("message") or item.get("detail")
                if isinstance(text, str):
                    parts.append(text)
    text = "; ".join(dict.fromkeys(parts)) or "no error details"
    return text[:_MAX_DETAIL], tuple(codes)


def is_duplicate_content(details: str, codes: tuple[int, ...]) -> bool:
    return DUPLICATE_CONTENT_CODE in codes or "duplicate" in details.lower()
