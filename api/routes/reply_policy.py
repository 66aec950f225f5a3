"""A bot's reply policy (who it answers, how often, what it may say and spend), the mentions it did
not answer and why, the authors who opted out, and today's spend."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, ValidationError

from api.auth import require_token
from api.deps import COMMON_ERRORS, ExistingBotId, NotFound, Pool, State, error_docs
from api.errors import ApiError
from api.pagination import cut_page, decode_cursor
from xbot.reply_policy import ReplyPolicy
from xbot.storage import bots, opt_outs, posts, reply_policies
from xbot.storage.opt_outs import OptOut
from xbot.storage.posts import SkippedMention

router = APIRouter(tags=["reply policy"], dependencies=[Depends(require_token)], responses=COMMON_ERRORS)


class ReplyPolicyOut(ReplyPolicy):
    operator_bot_ids: list[str] = []  # read-only: never answered while skip_operator_bots is on


@router.get("/bots/{botId}/reply-policy", response_model=ReplyPolicyOut, responses=error_docs(404, 409))
async def read_policy(bot_id: ExistingBotId, pool: Pool) -> ReplyPolicyOut:
    """The bot's policy (the defaults until one is saved)."""
    try:
        policy = await reply_policies.load_policy(pool, bot_id)
    except ValidationError:  # written around the API: say so rather than fail with a 500
        raise ApiError(409, f"bot {bot_id}'s stored reply policy is invalid; PUT a new one") from None
    others = sorted(await bots.operator_bot_ids(pool, bot_id))
    return ReplyPolicyOut(**policy.model_dump(), operator_bot_ids=others)


@router.put("/bots/{botId}/reply-policy", response_model=ReplyPolicyOut, responses=error_docs(404))
async def write_policy(bot_id: ExistingBotId, body: ReplyPolicy, pool: Pool) -> ReplyPolicyOut:
    """Replace the whole policy; fields left out take their defaults. Applies from the next run."""
    await reply_policies.save_policy(pool, bot_id, body)
    return await read_policy(bot_id, pool)


class SkippedPage(BaseModel):
    items: list[SkippedMention]
    next_cursor: str | None


@router.get("/bots/{botId}/mentions/skipped", response_model=SkippedPage, responses=error_docs(404))
async def skipped_mentions(
    bot_id: ExistingBotId,
    pool: Pool,
    code: Annotated[str | None, Query(max_length=50, pattern=r"^[a-z_]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> SkippedPage:
    """Mentions the bot will not answer, newest first, with why (`skipped_code`: the reply policy's
    rule, or `backlog` for mentions pull_mentions skipped as too old)."""
    before = decode_cursor(cursor) if cursor is not None else None
    rows = await posts.skipped_mentions(pool, bot_id, code=code, before=before, limit=limit + 1)
    items, next_cursor = cut_page(rows, limit, lambda row: (row.pulled_at, row.id))
    return SkippedPage(items=items, next_cursor=next_cursor)


@router.get("/bots/{botId}/opt-outs", response_model=list[OptOut], responses=error_docs(404))
async def list_opt_outs(bot_id: ExistingBotId, pool: Pool) -> list[OptOut]:
    """Authors who sent an opt-out word: the bot no longer answers them."""
    return await opt_outs.opted_out_authors(pool, bot_id)


@router.delete(
    "/bots/{botId}/opt-outs/{xUserId}", status_code=204, response_class=Response, responses=error_docs(404)
)
async def forget_opt_out(
    bot_id: ExistingBotId,
    pool: Pool,
    x_user_id: Annotated[str, Path(alias="xUserId", pattern=r"^[0-9]{1,20}$")],
) -> Response:
    """The author asked to be answered again."""
    if not await opt_outs.forget_opt_out(pool, bot_id, x_user_id):
        raise NotFound(f"author {x_user_id} has not opted out of bot {bot_id}")
    return Response(status_code=204)


class Spend(BaseModel):
    day: str
    tokens_in: int
    tokens_out: int
    llm_calls: int
    llm_cost_usd: float
    x_spend_usd: float
    daily_token_budget: int | None
    daily_x_spend_usd: float | None


@router.get("/bots/{botId}/spend", response_model=Spend, responses=error_docs(404))
async def spend(bot_id: ExistingBotId, pool: Pool, state: State) -> Spend:
    """Today's (UTC) LLM tokens and estimated costs against the policy's budgets."""
    prices = state.settings
    now = datetime.now(UTC)
    today = await reply_policies.spend_today(pool, bot_id, now)
    try:
        policy = await reply_policies.load_policy(pool, bot_id)
    except ValidationError:
        policy = ReplyPolicy(daily_token_budget=None, daily_x_spend_usd=None)
    llm_cost = (
        today["tokens_in"] * prices.llm_price_input_per_mtok_usd
        + today["tokens_out"] * prices.llm_price_output_per_mtok_usd
    ) / 1_000_000
    return Spend(
        **today,
        llm_cost_usd=round(llm_cost, 6),
        daily_token_budget=policy.daily_token_budget,
        daily_x_spend_usd=policy.daily_x_spend_usd,
    )
