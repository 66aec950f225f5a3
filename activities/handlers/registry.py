"""The one place a task type is registered: its name and its handler class, one line each.

A handler class takes `HandlerDeps` and has `async def run(self, ctx: TaskContext) -> dict`.
"""

from __future__ import annotations

from collections.abc import Callable

from activities.handlers.base import HandlerDeps, TaskHandler
from activities.handlers.generate_replies import GenerateRepliesHandler
from activities.handlers.noop import NoopHandler
from activities.handlers.pull_mentions import PullMentionsHandler
from activities.handlers.reply_to_mentions import ReplyToMentionsHandler
from activities.handlers.send_notifications import SendNotificationsHandler
from activities.handlers.user_fetch import UserFetchHandler
from activities.handlers.webhook import WebhookHandler

HANDLER_CLASSES: dict[str, Callable[[HandlerDeps], TaskHandler]] = {
    "noop": NoopHandler,
    "webhook": WebhookHandler,
    "pull_mentions": PullMentionsHandler,
    "generate_replies": GenerateRepliesHandler,
    "generate_replys": GenerateRepliesHandler,  # the seed's spelling
    "reply_to_mentions": ReplyToMentionsHandler,
    "user_fetch": UserFetchHandler,
    "send_notifications": SendNotificationsHandler,
}

TASK_TYPES: frozenset[str] = frozenset(HANDLER_CLASSES)


def build_handlers(deps: HandlerDeps) -> dict[str, TaskHandler]:
    return {task_type: make(deps) for task_type, make in HANDLER_CLASSES.items()}
