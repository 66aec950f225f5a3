"""approve_reply, reject_reply, edit_reply_text: the operator actions behind the HTTP API."""

from __future__ import annotations

import pytest

from tests.handlers.conftest import World
from xbot.replies import ReplyNotFoundError, ReplyStateError, ReplyTextError
from xbot.storage.replies import (
    approve_reply,
    edit_reply_text,
    reject_reply,
)


async def reply_in(world: World, bot_id: str, status: str, text: str | None = "draft") -> int:
    post_id = await world.pool.fetchval(
        "INSERT INTO pulled_posts (bot_id, x_post_id, text) VALUES ($1, $2, 'hi') RETURNING id",
        bot_id,
        str(5000 + await world.pool.fetchval("SELECT count(*) FROM pulled_posts")),
    )
    reply_id: int = await world.pool.fetchval(
        "INSERT INTO post_replies (bot_id, pulled_post_id, in_reply_to_x_post_id, status, text)"
        " VALUES ($1, $2, 'x', $3, $4) RETURNING id",
        bot_id,
        post_id,
        status,
        text,
    )
    return reply_id


async def test_approve_and_reject_check_the_state(world: World) -> None:
    bot = await world.add_bot()
    pending = await reply_in(world, bot, "pending_approval")
    assert (await approve_reply(world.pool, bot, pending)).status == "approved"
    with pytest.raises(ReplyStateError, match="it is approved"):
        await approve_reply(world.pool, bot, pending)
    assert (await reject_reply(world.pool, bot, pending)).status == "rejected"
    with pytest.raises(ReplyStateError):
        await reject_reply(world.pool, bot, pending)
    for status in ("posting", "posted", "dry_run"):
        with pytest.raises(ReplyStateError):
            await reject_reply(world.pool, bot, await reply_in(world, bot, status))
    with pytest.raises(ReplyNotFoundError):
        await approve_reply(world.pool, bot, 999_999)
    other = await world.add_bot("bot-2")
    with pytest.raises(ReplyNotFoundError):
        await approve_reply(world.pool, other, await reply_in(world, bot, "pending_approval"))


async def test_edit_validates_text_and_revives_failed_replies(world: World) -> None:
    bot = await world.add_bot()
    pending = await reply_in(world, bot, "pending_approval")
    edited = await edit_reply_text(world.pool, bot, pending, "  New text  ")
    assert (edited.text, edited.status) == ("New text", "pending_approval")
    with pytest.raises(ReplyTextError):
        await edit_reply_text(world.pool, bot, pending, "   ")
    with pytest.raises(ReplyTextError):
        await edit_reply_text(world.pool, bot, pending, "好" * 141)  # 282 as X counts
    with pytest.raises(ReplyStateError):
        await edit_reply_text(world.pool, bot, await reply_in(world, bot, "posted"), "late")

    failed = await reply_in(world, bot, "failed", text=None)
    revived = await edit_reply_text(world.pool, bot, failed, "Written by hand")
    assert (revived.status, revived.error_message, revived.post_intent_at) == ("approved", None, None)
    await world.pool.execute("UPDATE bots SET approval_required = true WHERE id = $1", bot)
    failed_again = await reply_in(world, bot, "failed", text=None)
    assert (await edit_reply_text(world.pool, bot, failed_again, "Hand-written")).status == "pending_approval"
