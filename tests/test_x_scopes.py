"""The scopes each task type asks for agree with X's API v2 specification for the endpoints it calls."""

from __future__ import annotations

import json
from pathlib import Path

from activities.handlers.registry import TASK_TYPES
from xbot.x import scopes as x_scopes

SPEC = Path(__file__).parent / "contracts" / "x-api-v2-openapi.json"

# The X requests each task type makes (see activities/handlers).
ENDPOINTS: dict[str, list[tuple[str, str]]] = {
    "pull_mentions": [("get", "/2/users/me"), ("get", "/2/users/{id}/mentions")],
    "generate_replies": [("get", "/2/tweets")],
    "generate_replys": [("get", "/2/tweets")],
    "reply_to_mentions": [("post", "/2/tweets"), ("get", "/2/users/{id}/tweets"), ("get", "/2/users/me")],
    "user_fetch": [("get", "/2/users")],
}


def spec_scopes(method: str, path: str) -> set[str]:
    spec = json.loads(SPEC.read_text())
    security = spec["paths"][path][method]["security"]
    return {scope for entry in security for scope in entry.get("OAuth2UserToken", [])}


def test_every_x_task_type_asks_for_what_its_endpoints_require() -> None:
    assert set(x_scopes.TASK_SCOPES) == set(ENDPOINTS) and set(ENDPOINTS) <= TASK_TYPES
    for task_type, endpoints in ENDPOINTS.items():
        required = set().union(*(spec_scopes(method, path) for method, path in endpoints))
        assert x_scopes.TASK_SCOPES[task_type] == required, task_type


def test_a_connect_asks_for_the_defaults_and_what_the_tasks_need() -> None:
    assert x_scopes.requested([]) == ["offline.access", "tweet.read", "tweet.write", "users.read"]
    assert x_scopes.missing("tweet.read users.read", ["reply_to_mentions", "noop"]) == [
        "offline.access",
        "tweet.write",
    ]
    assert x_scopes.missing(None, ["reply_to_mentions"]) == []
    assert x_scopes.missing_for_task("tweet.read users.read", "webhook") == []
