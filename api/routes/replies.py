"""Reply drafts of a bot: list them, approve, reject, or edit the text before approval."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from api.auth import require_token
from api.deps import COMMON_ERRORS, ExistingBotId, NotFound, Pool, ReplyIdPath, error_docs
from api.errors import ApiError
from api.pagination import cut_page, decode_cursor
from xbot.replies import Reply, ReplyError, ReplyNotFoundError, ReplyStateError, ReplyTextError
from xbot.storage import replies

router = APIRouter(tags=["replies"], dependencies=[Depends(require_token)], responses=COMMON_ERRORS)

ReplyStatus = Literal[
    "pending_approval", "approved", "rejected", "posting", "posted", "dry_run", "failed", "rejected_by_filter"
]


class ReplyPage(BaseModel):
    items: list[Reply]
    next_cursor: str | None


class ReplyEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=1000, description="At most 280 characters as X counts them")


async def _answer(change: Awaitable[Reply]) -> Reply:
    """The reply after the storage call, or the HTTP error its refusal maps to."""
    try:
        return await change
    except ReplyError as error:
        raise _api_error(error) from None


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
    before = decode_cursor(cursor) if cursor is not None else None
    rows = await replies.list_replies(pool, bot_id, status=status, before=before, limit=limit + 1)
    items, next_cursor = cut_page(rows, limit, lambda row: (row.created_at, row.id))
    return ReplyPage(items=items, next_cursor=next_cursor)


@router.get("/bots/{botId}/replies/{replyId}", response_model=Reply, responses=error_docs(404))
async def read(bot_id: ExistingBotId, reply_id: ReplyIdPath, pool: Pool) -> Reply:
    return await _answer(replies.get_reply(pool, bot_id, reply_id))


@router.post("/bots/{botId}/replies/{replyId}/approve", response_model=Reply, responses=error_docs(404, 409))
async def approve(bot_id: ExistingBotId, reply_id: ReplyIdPath, pool: Pool) -> Reply:
    """pending_approval -> approved; the bot's next reply_to_mentions run posts it."""
    return await _answer(replies.approve_reply(pool, bot_id, reply_id))


@router.post("/bots/{botId}/replies/{replyId}/reject", response_model=Reply, responses=error_docs(404, 409))
async def reject(bot_id: ExistingBotId, reply_id: ReplyIdPath, pool: Pool) -> Reply:
    """The draft will never be posted."""
    return await _answer(replies.reject_reply(pool, bot_id, reply_id))


@router.patch("/bots/{botId}/replies/{replyId}", response_model=Reply, responses=error_docs(404, 409))
async def edit(bot_id: ExistingBotId, reply_id: ReplyIdPath, body: ReplyEdit, pool: Pool) -> Reply:
    """New text for a draft not posted yet (a failed one becomes a draft again)."""
    return await _answer(replies.edit_reply_text(pool, bot_id, reply_id, body.text))
