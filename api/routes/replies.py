"""Reply drafts of a bot: list them, approve, reject, or edit the text before approval."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from api.auth import require_token
from api.deps import COMMON_ERRORS, ExistingBotId, NotFound, Pool, ReplyIdPath, error_docs
from api.errors import ApiError
from api.pagination import decode_cursor, encode_cursor
from xbot.storage.replies import (
    ReplyError,
    ReplyNotFoundError,
    ReplyStateError,
    ReplyTextError,
    approve_reply,
    edit_reply_text,
    reject_reply,
)

router = APIRouter(tags=["replies"], dependencies=[Depends(require_token)], responses=COMMON_ERRORS)

ReplyStatus = Literal[
    "pending_approval", "approved", "rejected", "posting", "posted", "dry_run", "failed", "rejected_by_filter"
]


class ReplyOut(BaseModel):
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


class ReplyPage(BaseModel):
    items: list[ReplyOut]
    next_cursor: str | None


class ReplyEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=1000, description="At most 280 characters as X counts them")


_SELECT = """
SELECT r.id, r.bot_id, r.pulled_post_id, r.in_reply_to_x_post_id, r.status, r.text, r.llm_model,
       r.error_message, r.failure_kind, r.posted_x_post_id, r.posted_at, r.created_at, r.updated_at,
       r.tokens_in, r.tokens_out, r.x_cost_usd::float8 AS x_cost_usd,
       r.prompt_template_id, t.name AS prompt_template_name, r.prompt_version, r.llm_config_id,
       p.image_description, p.vision_error,
       p.text AS mention_text, u.username AS mention_author_username
FROM post_replies r
JOIN pulled_posts p ON p.id = r.pulled_post_id
LEFT JOIN x_users u ON u.x_user_id = p.author_x_user_id
LEFT JOIN prompt_templates t ON t.id = r.prompt_template_id
"""


async def _one(pool: Pool, bot_id: str, reply_id: int) -> ReplyOut:
    row = await pool.fetchrow(_SELECT + " WHERE r.bot_id = $1 AND r.id = $2", bot_id, reply_id)
    if row is None:
        raise NotFound(f"bot {bot_id} has no reply {reply_id}")
    return ReplyOut.model_validate(dict(row))


def _api_error(error: ReplyError) -> ApiError:
    if isinstance(error, ReplyNotFoundError):
        return NotFound(str(error))
    if isinstance(error, ReplyStateError):
        return ApiError(409, str(error))
    if isinstance(error, ReplyTextError):
        return ApiError(422, f"text: {error}")
    return ApiError(400, str(error))


@router.get("/bots/{botId}/replies", response_model=ReplyPage, responses=error_docs(404))
async def list_replies(
    bot_id: ExistingBotId,
    pool: Pool,
    status: Annotated[ReplyStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> ReplyPage:
    """Reply drafts, newest first; `status=pending_approval` lists those waiting for approval."""
    conditions = ["r.bot_id = $1"]
    args: list[object] = [bot_id]
    if status is not None:
        args.append(status)
        conditions.append(f"r.status = ${len(args)}")
    if cursor is not None:
        at, row_id = decode_cursor(cursor)
        args += [at, row_id]
        conditions.append(f"(r.created_at, r.id) < (${len(args) - 1}, ${len(args)})")
    rows = await pool.fetch(
        _SELECT
        + f" WHERE {' AND '.join(conditions)} ORDER BY r.created_at DESC, r.id DESC LIMIT {limit + 1}",
        *args,
    )
    items = [ReplyOut.model_validate(dict(row)) for row in rows[:limit]]
    more = len(rows) > limit
    return ReplyPage(
        items=items, next_cursor=encode_cursor(items[-1].created_at, items[-1].id) if more else None
    )


@router.get("/bots/{botId}/replies/{replyId}", response_model=ReplyOut, responses=error_docs(404))
async def read(bot_id: ExistingBotId, reply_id: ReplyIdPath, pool: Pool) -> ReplyOut:
    return await _one(pool, bot_id, reply_id)


@router.post(
    "/bots/{botId}/replies/{replyId}/approve", response_model=ReplyOut, responses=error_docs(404, 409)
)
async def approve(bot_id: ExistingBotId, reply_id: ReplyIdPath, pool: Pool) -> ReplyOut:
    """pending_approval -> approved; the bot's next reply_to_mentions run posts it."""
    try:
        await approve_reply(pool, bot_id, reply_id)
    except ReplyError as error:
        raise _api_error(error) from None
    return await _one(pool, bot_id, reply_id)


@router.post(
    "/bots/{botId}/replies/{replyId}/reject", response_model=ReplyOut, responses=error_docs(404, 409)
)
async def reject(bot_id: ExistingBotId, reply_id: ReplyIdPath, pool: Pool) -> ReplyOut:
    """The draft will never be posted."""
    try:
        await reject_reply(pool, bot_id, reply_id)
    except ReplyError as error:
        raise _api_error(error) from None
    return await _one(pool, bot_id, reply_id)


@router.patch("/bots/{botId}/replies/{replyId}", response_model=ReplyOut, responses=error_docs(404, 409))
async def edit(bot_id: ExistingBotId, reply_id: ReplyIdPath, body: ReplyEdit, pool: Pool) -> ReplyOut:
    """New text for a draft not posted yet (a failed one becomes a draft again)."""
    try:
        await edit_reply_text(pool, bot_id, reply_id, body.text)
    except ReplyError as error:
        raise _api_error(error) from None
    return await _one(pool, bot_id, reply_id)
