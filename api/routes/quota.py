"""A bot's quota: every X window the ledger tracks for it and for its app (`xbot.x.quota`)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from api.auth import require_token
from api.deps import COMMON_ERRORS, ExistingBotId, Pool, State, error_docs
from xbot.storage import bots as bots_table
from xbot.x import quota

router = APIRouter(tags=["bots"], dependencies=[Depends(require_token)], responses=COMMON_ERRORS)


class QuotaLimit(BaseModel):
    scope: Literal["bot", "app"] = Field(description="`app` windows are shared by every bot of the X app")
    endpoint: str = Field(description="A key of xbot.x.rate_limits.ENDPOINTS")
    window: Literal["15m", "24h", "month"]
    limit: int | None = Field(description="null when X did not say (a usage cap)")
    remaining: int = Field(description="Requests left, as X last said, minus those counted since")
    in_flight: int = Field(description="Requests reserved and not answered yet")
    resets_at: datetime | None = Field(description="null: the window has reset and is full again")
    source: Literal["x-rate-limit", "x-user-limit-24hour", "x-app-limit-24hour", "usage-capped", "429"] = (
        Field(
            description="Where the numbers come from: X's headers (x-rate-limit: or the plan's limit before X "
            "sent any), X's usage-capped problem, or a 429 while every window X described had room"
        )
    )
    reason: str | None = Field(description="Why X closed it (usage-capped problem), when it did")


class BotQuota(BaseModel):
    bot_id: str
    limits: list[QuotaLimit]


@router.get("/bots/{botId}/quota", response_model=BotQuota, responses=error_docs(404))
async def read_quota(bot_id: ExistingBotId, pool: Pool, state: State) -> BotQuota:
    """The bot's X windows: per endpoint its own 15-minute (or plan) and 24-hour windows, the app's
    24-hour and 15-minute windows, and usage caps (`month`), with what is left and when they reset."""
    plan_tier: str = await bots_table.plan_tier(pool, bot_id) or "basic"
    app = quota.app_key(state.settings.x_client_id)
    windows = await quota.bot_quota(pool, bot_id, plan_tier, app=app)
    return BotQuota(
        bot_id=bot_id,
        limits=[
            QuotaLimit(
                scope=w.scope,
                endpoint=w.endpoint,
                window=w.window,
                limit=w.limit,
                remaining=w.remaining,
                in_flight=w.in_flight,
                resets_at=w.reset_at,
                source=w.source,
                reason=w.reason,
            )
            for w in windows
        ],
    )
