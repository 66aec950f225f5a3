"""Error types shared by handlers, the task runner and the API."""

from __future__ import annotations

from datetime import datetime


class TaskError(Exception):
    """A task failed. Retryable unless it is a NonRetryableTaskError."""


class NonRetryableTaskError(TaskError):
    """Retrying cannot fix it: revoked auth, bad configuration, a 4xx validation error."""


class RateLimitedError(TaskError):
    """The endpoint's window is exhausted until `reset_at`; not a failure of the task itself."""

    def __init__(self, endpoint: str, reset_at: datetime, message: str | None = None) -> None:
        super().__init__(message or f"rate limit for {endpoint} exhausted until {reset_at.isoformat()}")
        self.endpoint = endpoint
        self.reset_at = reset_at
