"""Reading X's answers to the client's requests: a `Page` of posts and users, X's errors as the types of
xbot.x.errors, and which looked-up posts X did not return.

Pure functions of a response or its JSON body, no I/O: xbot.x.client sends the requests and the quota
ledger's bookkeeping; these helpers turn what comes back into values or exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from xbot.x.errors import (
    XBadRequestError,
    XClientError,
    XDuplicateContentError,
    XForbiddenError,
    XMalformedResponseError,
    XNotFoundError,
    XServerError,
    describe_error_body,
    is_duplicate_content,
)


@dataclass(frozen=True)
class Page:
    """One response of a post timeline or lookup: posts, expanded users/posts, the next page token."""

    posts: list[dict[str, Any]]
    users: list[dict[str, Any]] = field(default_factory=list)
    included_posts: list[dict[str, Any]] = field(default_factory=list)
    next_token: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    media: list[dict[str, Any]] = field(default_factory=list)  # `includes.media`, by media_key


def body_or_error(key: str, response: httpx.Response) -> dict[str, Any]:
    status = response.status_code
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if 200 <= status < 300:
        if not isinstance(body, dict):
            raise XMalformedResponseError(key, f"HTTP {status} with a body that is not a JSON object", status)
        return body
    if status >= 500:
        raise XServerError(key, f"HTTP {status}", status)
    details, codes = describe_error_body(body)
    if status in (400, 403) and is_duplicate_content(details, codes):
        raise XDuplicateContentError(key, status, details, codes)
    error_type: type[XClientError] = {
        400: XBadRequestError,
        403: XForbiddenError,
        404: XNotFoundError,
    }.get(status, XBadRequestError)
    raise error_type(key, status, details, codes)


def raise_lookup_errors(key: str, errors: list[dict[str, Any]]) -> None:
    """X answers 200 with only `errors` when a looked-up resource is missing or not visible."""
    for error in errors:
        kind = str(error.get("type", ""))
        details, codes = describe_error_body({"errors": [error]})
        if kind.endswith("resource-not-found"):
            raise XNotFoundError(key, 404, details, codes)
        if kind.endswith(("not-authorized-for-resource", "resource-unavailable")):
            raise XForbiddenError(key, 403, details, codes)


def missing_posts(page: Page, requested: list[str]) -> dict[str, str]:
    """{id: why} for each requested post X did not return: X's problem kind and text (e.g.
    `resource-unavailable: ...` for a suspended author), or "not returned by X"."""
    returned = {post["id"] for post in page.posts}
    reasons: dict[str, str] = {}
    for error in page.errors:
        if error.get("section") == "includes":
            continue  # about an expanded post or user, not one that was asked for
        post_id = error.get("resource_id") or error.get("value")
        if isinstance(post_id, str) and post_id in requested and post_id not in returned:
            kind = str(error.get("type") or "error").rsplit("/", 1)[-1]
            details, _ = describe_error_body({"errors": [error]})
            reasons.setdefault(post_id, f"{kind}: {details}")
    for post_id in requested:
        if post_id not in returned:
            reasons.setdefault(post_id, "not returned by X")
    return reasons


def object_field(body: dict[str, Any], name: str, key: str) -> dict[str, Any]:
    value = body.get(name)
    if not isinstance(value, dict):
        raise XMalformedResponseError(key, f"`{name}` missing or not an object")
    return value


def object_list(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def read_page(body: dict[str, Any], key: str) -> Page:
    data = body.get("data", [])
    if not isinstance(data, list):
        raise XMalformedResponseError(key, "`data` is not a list")
    for post in data:
        if not isinstance(post, dict) or not isinstance(post.get("id"), str):
            raise XMalformedResponseError(key, "a post without an id")
    includes: dict[str, Any] = body["includes"] if isinstance(body.get("includes"), dict) else {}
    meta: dict[str, Any] = body["meta"] if isinstance(body.get("meta"), dict) else {}
    next_token = meta.get("next_token")
    return Page(
        posts=data,
        users=object_list(includes.get("users")),
        included_posts=object_list(includes.get("tweets")),
        next_token=next_token if isinstance(next_token, str) and next_token else None,
        errors=object_list(body.get("errors")),
        media=object_list(includes.get("media")),
    )


__all__ = ["Page", "missing_posts"]
