"""Masked forms of secrets the API shows: webhook URLs (their path is the credential) and the
secret-looking headers and query parameters of webhook task configs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "****"
_SECRET_WORDS = re.compile(
    r"auth|token|secret|key|signature|sig$|password|passwd|cookie|session|credential|bearer", re.IGNORECASE
)
_LONG_NUMBER = re.compile(r"^\d{4,}$")


def is_secret_name(name: str) -> bool:
    """A header or query parameter whose value is likely a credential (Authorization, X-Api-Key...)."""
    return bool(_SECRET_WORDS.search(name))


def mask_webhook_url(url: str) -> str:
    """`https://discord.com/api/webhooks/123…/****`: scheme, host and the path's shape, never the
    token (the last path segment), a query or user info."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    segments = [segment for segment in parts.path.split("/") if segment]
    shown = [f"{segment[:3]}…" if _LONG_NUMBER.match(segment) else segment for segment in segments[:-1]]
    masked = "/".join([*shown, MASK])
    return urlunsplit((parts.scheme, netloc, f"/{masked}", MASK if parts.query else "", ""))


def mask_url_secrets(url: str) -> str:
    """The URL with its password and secret-looking query values replaced by the mask."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return MASK
    netloc = parts.netloc
    if password is not None:
        netloc = netloc.replace(f":{password}@", f":{MASK}@", 1)
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_name(name) for name, _ in pairs):
            query = urlencode([(n, MASK if is_secret_name(n) else v) for n, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def mask_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    return {name: MASK if is_secret_name(name) else value for name, value in headers.items()}


def mask_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A task config as the API shows it: `headers` and `url` (the webhook task's) masked."""
    shown = dict(config)
    if isinstance(shown.get("headers"), Mapping):
        shown["headers"] = mask_headers(shown["headers"])
    if isinstance(shown.get("url"), str):
        shown["url"] = mask_url_secrets(shown["url"])
    return shown


def restore_masked(new: Mapping[str, Any], stored: Mapping[str, Any]) -> dict[str, Any]:
    """A config sent back as the API showed it keeps the stored secrets: a masked header value or a
    URL equal to the stored one's masked form means "unchanged", not a new secret of `****`."""
    result = dict(new)
    headers, old_headers = result.get("headers"), stored.get("headers")
    if isinstance(headers, Mapping) and isinstance(old_headers, Mapping):
        previous = {str(name).lower(): value for name, value in old_headers.items()}
        result["headers"] = {
            name: previous[name.lower()] if value == MASK and name.lower() in previous else value
            for name, value in headers.items()
        }
    url, old_url = result.get("url"), stored.get("url")
    if (
        isinstance(url, str)
        and isinstance(old_url, str)
        and url != old_url
        and url == mask_url_secrets(old_url)
    ):
        result["url"] = old_url
    return result
