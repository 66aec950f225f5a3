"""Log lines never carry the credentials that travel in URLs and headers."""

from __future__ import annotations

import logging

import pytest

from xbot.log_setup import RedactSecrets, redact


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ('127.0.0.1:5 - "WebSocket /bots/b1/ws?token=s3cr3t-api-token" [accepted]', "s3cr3t-api-token"),
        ("GET /bots/b1/ws?x=1&token=abc.def-ghi HTTP/1.1", "abc.def-ghi"),
        (
            'HTTP Request: POST http://127.0.0.1:9/api/webhooks/123/hook-secret-token "HTTP/1.1 204"',
            "hook-secret-token",
        ),
        ("Authorization: Bearer very.secret.value", "very.secret.value"),
        ('"GET /oauth/x/callback?state=st4te-value&code=c0de-value HTTP/1.1" 303', "st4te-value"),
        ('"GET /oauth/x/callback?state=st4te-value&code=c0de-value HTTP/1.1" 303', "c0de-value"),
    ],
)
def test_redacts_credentials(line: str, secret: str) -> None:
    cleaned = redact(line)
    assert secret not in cleaned
    assert "***" in cleaned


def test_leaves_ordinary_lines_alone() -> None:
    line = "task 12 of bot b1 completed in 35 ms"
    assert redact(line) == line


def test_filter_rewrites_formatted_records() -> None:
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, __file__, 1, "%s - %s", ("peer", "/ws?token=abc"), None
    )
    assert RedactSecrets().filter(record) is True
    assert record.getMessage() == "peer - /ws?token=***"
