"""A bot's notifications outbox (Discord): what was sent, what waits for a retry, what failed and why."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from api.auth import require_token
from api.deps import COMMON_ERRORS, ExistingBotId, Pool, error_docs
from xbot.storage.outbox import OutboxMessage, list_messages

router = APIRouter(tags=["notifications"], dependencies=[Depends(require_token)], responses=COMMON_ERRORS)


@router.get("/bots/{botId}/notifications", response_model=list[OutboxMessage], responses=error_docs(404))
async def list_notifications(
    bot_id: ExistingBotId,
    pool: Pool,
    status: Annotated[Literal["pending", "sent", "failed"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[OutboxMessage]:
    """Newest first. `failed` ones say why in `last_error`; `pending` ones when they are tried again."""
    return await list_messages(pool, bot_id, status, limit)
