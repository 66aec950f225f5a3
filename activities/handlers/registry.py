"""The one place a task type is registered: its name and its handler class, one line each.

A handler class takes `HandlerDeps` and has `async def run(self, ctx: TaskContext) -> dict`.
"""

from __future__ import annotations

from collections.abc import Callable

from activities.handlers.base import HandlerDeps, TaskHandler
from activities.handlers.noop import NoopHandler
from activities.handlers.webhook import WebhookHandler

HANDLER_CLASSES: dict[str, Callable[[HandlerDeps], TaskHandler]] = {
    "noop": NoopHandler,
    "webhook": WebhookHandler,
}

TASK_TYPES: frozenset[str] = frozenset(HANDLER_CLASSES)


def build_handlers(deps: HandlerDeps) -> dict[str, TaskHandler]:
    return {task_type: make(deps) for task_type, make in HANDLER_CLASSES.items()}
