"""The OAuth 2.0 scopes each task type needs, as X's API v2 specification lists them per endpoint.

`pull_mentions` reads `/2/users/me` and `/2/users/{id}/mentions`, `generate_replies` reads `/2/tweets`,
`user_fetch` reads `/2/users`: `tweet.read users.read`. `reply_to_mentions` posts with `POST /2/tweets`:
`tweet.write` too. `offline.access` gets a refresh token, without which a connection ends in two hours.
"""

from __future__ import annotations

from collections.abc import Iterable

READ = frozenset({"tweet.read", "users.read"})
WRITE = READ | {"tweet.write"}
OFFLINE = "offline.access"

# Task types that call X, and what they need; the others (noop, webhook, ...) need no X scope.
TASK_SCOPES: dict[str, frozenset[str]] = {
    "pull_mentions": READ,
    "generate_replies": READ,
    "generate_replys": READ,  # the seed's spelling
    "reply_to_mentions": WRITE,
    "user_fetch": READ,
}

# Always asked for when connecting: reading and posting, and staying connected.
DEFAULT_SCOPES = WRITE | {OFFLINE}


def granted(scope: str | None) -> frozenset[str] | None:
    """The scopes of a token's space-separated `scope`; None when X did not say (tokens given by hand)."""
    if scope is None:
        return None
    return frozenset(scope.split())


def needed(task_types: Iterable[str]) -> frozenset[str]:
    """Every scope the given task types need (unknown types need none)."""
    result: set[str] = set()
    for task_type in task_types:
        result |= TASK_SCOPES.get(task_type, frozenset())
    return frozenset(result)


def requested(task_types: Iterable[str]) -> list[str]:
    """The scopes a connect asks X for, sorted: the defaults and whatever the task types add."""
    return sorted(DEFAULT_SCOPES | needed(task_types))


def missing(scope: str | None, task_types: Iterable[str]) -> list[str]:
    """Scopes the task types need (and `offline.access`) that the stored token lacks; [] when unknown."""
    have = granted(scope)
    if have is None:
        return []
    return sorted((needed(task_types) | {OFFLINE}) - have)


def missing_for_task(scope: str | None, task_type: str) -> list[str]:
    """The scopes one task type needs that the token lacks; [] when unknown or none needed."""
    have = granted(scope)
    if have is None:
        return []
    return sorted(TASK_SCOPES.get(task_type, frozenset()) - have)
