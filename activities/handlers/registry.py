"""The one place a task type gets its handler: its name (from xbot.task_types) and its handler class.

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
from xbot import task_types
from xbot.task_types import TASK_TYPES

HANDLER_CLASSES: dict[str, Callable[[HandlerDeps], TaskHandler]] = {
    task_types.NOOP: NoopHandler,
    task_types.WEBHOOK: WebhookHandler,
    task_types.PULL_MENTIONS: PullMentionsHandler,
    task_types.GENERATE_REPLIES: GenerateRepliesHandler,
    task_types.GENERATE_REPLIES_SEED_SPELLING: GenerateRepliesHandler,
    task_types.REPLY_TO_MENTIONS: ReplyToMentionsHandler,
    task_types.USER_FETCH: UserFetchHandler,
    task_types.SEND_NOTIFICATIONS: SendNotificationsHandler,
}

# The API accepts exactly the types the worker can run: a catalogue entry without a handler (or the
# reverse) fails at import, in every test and at worker start.
if set(HANDLER_CLASSES) != TASK_TYPES:
    raise RuntimeError(
        f"task types without a handler or handlers without a type: {set(HANDLER_CLASSES) ^ TASK_TYPES}"
    )

__all__ = ["HANDLER_CLASSES", "TASK_TYPES", "build_handlers"]


def build_handlers(deps: HandlerDeps) -> dict[str, TaskHandler]:
    return {task_type: make(deps) for task_type, make in HANDLER_CLASSES.items()}
