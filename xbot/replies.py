"""Reply drafts as values: the types xbot.storage.replies reads and writes, without its SQL.

`Reply` is the row as the API answers with it; `RedraftableReply` and `PostableReply` are what the
worker reads to redraft and to post; `Provenance` says what wrote a draft; the `ReplyError`s are what
the API maps to HTTP answers. Every statement on `post_replies` stays in xbot.storage.replies (a
table's SQL lives in one module); these types are kept apart so that module holds only its SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, Field


class ReplyError(Exception):
    """Base of the errors the API maps to HTTP answers."""


class ReplyNotFoundError(ReplyError):
    def __init__(self, bot_id: str, reply_id: int) -> None:
        super().__init__(f"bot {bot_id} has no reply {reply_id}")


class ReplyStateError(ReplyError):
    """The reply is in a state that does not allow the change (HTTP 409)."""

    def __init__(self, reply_id: int, status: str, action: str, allowed: tuple[str, ...]) -> None:
        super().__init__(
            f"cannot {action} reply {reply_id}: it is {status}; only {', '.join(allowed)} replies can be"
        )
        self.status = status


class ReplyTextError(ReplyError, ValueError):
    """The new text is empty or too long for a post (HTTP 422)."""


@dataclass(frozen=True)
class Provenance:
    """What wrote a draft, besides the model: the stored template (id, version) and configuration."""

    prompt_template_id: int | None = None
    prompt_version: int | None = None
    llm_config_id: int | None = None

    def values(self) -> tuple[int | None, int | None, int | None]:
        return self.prompt_template_id, self.prompt_version, self.llm_config_id


class Reply(BaseModel):
    """A reply draft, with the mention it answers and its prompt template's current name."""

    # One model for the row: the API answers with it as is, less the worker's bookkeeping (excluded).

    id: int
    bot_id: str
    pulled_post_id: int
    in_reply_to_x_post_id: str
    status: str
    text: str | None
    llm_model: str | None
    error_message: str | None
    failure_kind: str | None = Field(
        default=None,
        description="duplicate_content: X refused it as a copy; generate_replies drafts it again",
    )
    posted_x_post_id: str | None
    posted_at: datetime | None
    created_at: datetime
    updated_at: datetime
    mention_text: str | None = Field(default=None, description="The post this reply answers")
    mention_author_username: str | None = None
    tokens_in: int | None = Field(default=None, description="LLM prompt tokens spent on this draft")
    tokens_out: int | None = Field(default=None, description="LLM completion tokens spent on this draft")
    x_cost_usd: float | None = Field(default=None, description="Estimated X price of posting it")
    prompt_template_id: int | None = Field(
        default=None, description="The stored prompt template that wrote it"
    )
    prompt_template_name: str | None = Field(default=None, description="Its name now (null once deleted)")
    prompt_version: int | None = Field(default=None, description="The template's version when it wrote it")
    llm_config_id: int | None = Field(default=None, description="The stored LLM configuration used, if any")
    image_description: str | None = Field(
        default=None, description="What the vision model saw in the mention's images"
    )
    vision_error: str | None = Field(
        default=None, description="Why the mention's images could not be described (replied from its text)"
    )
    post_intent_at: datetime | None = Field(default=None, exclude=True)
    discord_notified_at: datetime | None = Field(default=None, exclude=True)


@dataclass(frozen=True)
class RedraftableReply:
    """A reply X refused as duplicate content, to draft again with different text."""

    id: int
    mention_x_post_id: str
    refused_text: str | None


@dataclass(frozen=True)
class PostableReply:
    id: int
    status: str  # 'approved' or 'posting'
    text: str
    in_reply_to_x_post_id: str
    post_intent_at: datetime | None
    mention_author_username: str | None
