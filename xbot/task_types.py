"""The catalogue of task types: the names a definition may use, shared by the API's validation and the
worker's handler registry (activities/handlers/registry.py gives each one its handler class)."""

from __future__ import annotations

NOOP = "noop"
WEBHOOK = "webhook"
PULL_MENTIONS = "pull_mentions"
GENERATE_REPLIES = "generate_replies"
GENERATE_REPLIES_SEED_SPELLING = "generate_replys"  # the seed's spelling, still accepted
REPLY_TO_MENTIONS = "reply_to_mentions"
USER_FETCH = "user_fetch"
SEND_NOTIFICATIONS = "send_notifications"

TASK_TYPES: frozenset[str] = frozenset(
    {
        NOOP,
        WEBHOOK,
        PULL_MENTIONS,
        GENERATE_REPLIES,
        GENERATE_REPLIES_SEED_SPELLING,
        REPLY_TO_MENTIONS,
        USER_FETCH,
        SEND_NOTIFICATIONS,
    }
)
