"""Process logging that never prints a secret.

Secrets reach log lines through URLs: the WebSocket's `?token=` and the OAuth callback's `?state=&code=`
in uvicorn's access log, and a Discord webhook URL (its last path segment is a credential) in httpx's
request log.
"""

from __future__ import annotations

import logging
import re
import sys

_REDACTIONS = (
    (
        re.compile(
            r"([?&](?:token|access_token|refresh_token|api_key|key|state|code|code_verifier)=)[^&\s\"']+",
            re.IGNORECASE,
        ),
        r"\1***",
    ),
    (re.compile(r"(/webhooks/\d+/)[^/?\s\"']+"), r"\1***"),
    (re.compile(r"(Bearer\s+)[^\s\"']+", re.IGNORECASE), r"\1***"),
)


def redact(text: str) -> str:
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites a record whose rendered message carries a credential."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def guard_handlers(*logger_names: str) -> None:
    """Put the redaction filter on the handlers of these loggers (root when none are named)."""
    names = logger_names or ("",)
    for name in names:
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if not any(isinstance(existing, RedactSecrets) for existing in handler.filters):
                handler.addFilter(RedactSecrets())


def configure_process_logging() -> None:
    """INFO to stderr, secrets redacted; httpx's per-request lines only at WARNING and above."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    guard_handlers()
