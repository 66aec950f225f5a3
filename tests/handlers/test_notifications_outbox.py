"""The Discord notifications outbox: queued once per reply, sent after the posting, 429s waited out,
5xx retried with backoff up to a bound, then failed with a reason; the URL policy at send time."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Iterable
from typing import Any

from activities.handlers.reply_to_mentions import ReplyToMentionsHandler
from activities.handlers.send_notifications import SendNotificationsHandler
from tests.handlers.conftest import World
from tests.handlers.test_reply_to_mentions import drafted, reply_row, run
from xbot import discord, outbox
from xbot.outbox import OutboxSender, RetryPolicy
from xbot.replies import PostableReply

FAST = RetryPolicy(base_delay_seconds=0.05, max_delay_seconds=1.0, max_failures=4)


def sender(world: World, policy: RetryPolicy = FAST, **options: Any) -> OutboxSender:
    return OutboxSender(
        world.pool, world.http, world.cipher, allow_private_urls=True, policy=policy, **options
    )


async def outbox_rows(world: World, bot_id: str) -> list[dict[str, Any]]:
    rows = await world.pool.fetch(
        "SELECT id, reply_id, status, attempts, failures, last_error, next_attempt_at,"
        " next_attempt_at - now() AS wait FROM notification_outbox WHERE bot_id = $1 ORDER BY id",
        bot_id,
    )
    return [dict(row) for row in rows]


async def posted_bot(world: World, *authors: str, **columns: Any) -> tuple[str, list[str]]:
    """A bot with the fake Discord webhook and drafted replies to mentions by `authors`."""
    bot = await world.add_bot(x_user_id="1000", discord_webhook_url=world.discord_url, **columns)
    for number, author in enumerate(authors):
        world.x.add_user(f"20{number:02d}", author)
    mentions = await drafted(world, bot, *((f"20{n:02d}", f"@helperbot hi {n}") for n in range(len(authors))))
    return bot, mentions


async def test_a_429_is_waited_out_and_the_message_delivered_once(world: World) -> None:
    bot, (mention,) = await posted_bot(world, "alice")
    world.discord.rate_limit(0.6)  # body retry_after 0.6, Retry-After: 1

    result = await run(world, bot)

    assert result["replies_sent"] == 1 and world.x.posts_per_mention == {mention: 1}
    assert world.discord.requests == 2 and len(world.discord.messages) == 1
    assert "@alice" in world.discord.messages[0]["content"]
    (first, status), _ = world.discord.answered
    assert status == 429
    assert world.discord.delivered_at[0] - first >= 0.6  # not before retry_after
    (row,) = await outbox_rows(world, bot)
    assert row["status"] == "sent" and row["attempts"] == 2 and row["failures"] == 0
    assert (await reply_row(world, bot, mention))["discord_notified_at"] is not None

    await run(world, bot)
    await SendNotificationsHandler(world.deps).run(world.ctx(bot, "send_notifications"))
    assert world.discord.requests == 2 and len(world.discord.messages) == 1


async def test_the_retry_after_header_is_honoured_without_a_body(world: World) -> None:
    bot, _ = await posted_bot(world, "alice")
    world.discord.rate_limit(1.0, in_body=False)

    await run(world, bot)

    (first, _status), (second, _) = world.discord.answered
    assert world.discord.requests == 2 and len(world.discord.messages) == 1
    assert second - first >= 1.0


async def test_a_429_is_not_retried_before_retry_after(world: World) -> None:
    bot, _ = await posted_bot(world, "alice")
    world.discord.rate_limit(1.0)
    quick = sender(world)

    await run(world, bot)  # its drain tries once and waits for the retry (1 s is short)
    assert len(world.discord.messages) == 1

    # Without waiting: the next try is left for a later drain.
    world.discord.rate_limit(0.8)
    reply_id = await world.pool.fetchval("SELECT reply_id FROM notification_outbox WHERE bot_id = $1", bot)
    await world.pool.execute("DELETE FROM notification_outbox WHERE bot_id = $1", bot)
    notice = discord.ReplyNotice("Bot", "alice", "1", "text", "2")
    assert await outbox.enqueue_reply_notice(world.pool, bot, reply_id, notice)
    report = await quick.drain(bot, max_wait_seconds=0)
    assert [e.outcome for e in report.events] == ["retrying"] and world.discord.requests == 3
    (row,) = await outbox_rows(world, bot)
    assert row["status"] == "pending" and 0.5 < row["wait"].total_seconds() <= 0.8
    assert row["last_error"] == "rate limited by Discord (retry after 0.8 s)"

    assert (await quick.drain(bot, max_wait_seconds=0)).events == []
    assert world.discord.requests == 3  # nothing sent early
    await asyncio.sleep(0.85)
    assert [e.outcome for e in (await quick.drain(bot, max_wait_seconds=0)).events] == ["sent"]
    assert world.discord.requests == 4 and len(world.discord.messages) == 2


async def test_a_5xx_storm_ends_failed_with_the_reason_after_the_bound(world: World) -> None:
    bot, (mention,) = await posted_bot(world, "alice")
    world.discord.fail_always = True
    world.discord.fail_status = 503

    result = await run(world, bot)  # default policy: the first retry is 10 s away

    assert result["replies_sent"] == 1 and world.x.posts_per_mention == {mention: 1}
    (row,) = await outbox_rows(world, bot)
    assert (row["status"], row["failures"]) == ("pending", 1)
    assert row["last_error"] == "Discord answered HTTP 503"
    assert 9 < row["wait"].total_seconds() <= 10

    await world.pool.execute("UPDATE notification_outbox SET next_attempt_at = now()")
    report = await sender(world).drain(bot, max_wait_seconds=1)

    assert [e.outcome for e in report.events] == ["retrying", "retrying", "failed"]
    (row,) = await outbox_rows(world, bot)
    assert (row["status"], row["attempts"], row["failures"]) == ("failed", 4, 4)
    assert row["last_error"] == "Discord answered HTTP 503; gave up after 4 failed attempts"
    assert world.discord.requests == 4 and world.discord.messages == []
    # Exponential backoff between the drain's tries (after failures 2 and 3): 0.1 s, then 0.2 s.
    times = [at for at, _status in world.discord.answered[1:]]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2
    assert (await reply_row(world, bot, mention))["discord_notified_at"] is None
    assert await sender(world).drain(bot, max_wait_seconds=1) == outbox.DrainReport()
    logged = await world.pool.fetch("SELECT content FROM logs WHERE bot_id = $1 AND level = 'warn'", bot)
    assert any("will be retried" in r["content"] and "HTTP 503" in r["content"] for r in logged)


async def test_connection_errors_are_retried_and_named_without_the_url(world: World) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    bot, _ = await posted_bot(world, "alice")
    url = f"http://127.0.0.1:{port}/api/webhooks/7/secret-token"
    await world.pool.execute(
        "UPDATE bots SET discord_webhook_url_enc = $2 WHERE id = $1", bot, world.cipher.encrypt(url)
    )

    await run(world, bot)

    (row,) = await outbox_rows(world, bot)
    assert (row["status"], row["failures"]) == ("pending", 1)
    assert row["last_error"] == "ConnectError reaching Discord"
    logged = await world.pool.fetch("SELECT content, context::text FROM logs WHERE bot_id = $1", bot)
    assert "secret-token" not in str([dict(r) for r in logged])


async def test_other_4xx_fail_at_once(world: World) -> None:
    bot, _ = await posted_bot(world, "alice")
    world.discord.answers.append(404)  # the webhook was deleted

    await run(world, bot)

    (row,) = await outbox_rows(world, bot)
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert row["last_error"] == "Discord refused the message: HTTP 404"
    assert world.discord.requests == 1


async def test_one_reply_one_message_however_often_it_is_notified(world: World) -> None:
    bot, (mention,) = await posted_bot(world, "alice")
    handler = ReplyToMentionsHandler(world.deps)

    await run(world, bot)
    await run(world, bot)
    # A repeated attempt that gets to the notification again (e.g. Temporal retried the activity).
    row = await reply_row(world, bot, mention)
    reply = PostableReply(int(row["id"]), "posting", str(row["text"]), mention, None, "alice")  # type: ignore[call-overload]
    bot_profile = await _profile(world, bot)
    await handler._notify(world.ctx(bot, "reply_to_mentions"), bot_profile, reply, "999")
    await SendNotificationsHandler(world.deps).run(world.ctx(bot, "send_notifications"))

    assert len(world.discord.messages) == 1 and world.discord.requests == 1
    assert len(await outbox_rows(world, bot)) == 1


async def test_concurrent_drains_send_each_message_once(world: World) -> None:
    bot, mentions = await posted_bot(world, "alice", "bob", "carol")
    world.discord.fail_always = True
    await run(world, bot)  # three replies posted; their notifications wait for a retry
    world.discord.fail_always = False
    world.discord.latency = 0.2
    await world.pool.execute("UPDATE notification_outbox SET next_attempt_at = now()")

    reports = await asyncio.gather(*(sender(world).drain(bot) for _ in range(4)))

    assert sum(report.count("sent") for report in reports) == 3
    assert len(world.discord.messages) == 3 and world.discord.requests == 3 + 3
    assert sorted(m["content"].split(" (post ")[0] for m in world.discord.messages) == [
        f"**Bot {bot}** replied to @{name}" for name in ("alice", "bob", "carol")
    ]
    assert {r["status"] for r in await outbox_rows(world, bot)} == {"sent"}
    assert len(mentions) == 3


async def test_a_discord_outage_never_holds_up_or_fails_the_posting(world: World) -> None:
    bot, mentions = await posted_bot(world, "alice", "bob")
    world.discord.fail_always = True
    world.discord.latency = 0.3
    world.discord.observe = lambda: len(world.x.requests_to("create_post"))

    result = await run(world, bot)

    assert result == {"replies_sent": 2, "replies_failed": 0, "replies_recovered": 0}
    assert world.x.posts_per_mention == dict.fromkeys(mentions, 1)
    assert world.discord.observed[0] == 2  # both posts went out before the first notification


async def test_bots_without_a_webhook_and_dry_runs_queue_nothing(world: World) -> None:
    plain = await world.add_bot("plain", x_user_id="1000")
    world.x.add_user("2001", "alice")
    await drafted(world, plain, ("2001", "@helperbot hi"))
    dry = await world.add_bot("dry", x_user_id="1000", dry_run=True, discord_webhook_url=world.discord_url)
    await drafted(world, dry, ("2001", "@helperbot hey"))

    await run(world, plain)
    await run(world, dry)

    assert await world.pool.fetchval("SELECT count(*) FROM notification_outbox") == 0
    assert world.discord.requests == 0


async def test_the_sender_applies_the_url_policy_at_send_time(world: World) -> None:
    """DNS rebinding: the webhook's host resolved to a public address when saved, a private one now."""
    bot, _ = await posted_bot(world, "alice")
    world.discord.fail_always = True
    await run(world, bot)  # queued, first try failed
    await world.pool.execute(
        "UPDATE bots SET discord_webhook_url_enc = $2 WHERE id = $1",
        bot,
        world.cipher.encrypt("https://hooks.rebind.example/api/webhooks/1/secret-token"),
    )
    await world.pool.execute("UPDATE notification_outbox SET next_attempt_at = now()")

    async def rebinding(host: str, port: int) -> Iterable[str]:
        assert host == "hooks.rebind.example"
        return ["162.159.135.232", "169.254.169.254"]

    strict = OutboxSender(
        world.pool, world.http, world.cipher, allow_private_urls=False, policy=FAST, resolver=rebinding
    )
    (event,) = (await strict.drain(bot)).events

    assert event.outcome == "failed"
    assert event.reason == (
        "webhook URL refused by the outbound URL policy: host hooks.rebind.example resolves to"
        " 169.254.169.254, a link-local (cloud metadata service) address"
    )
    assert world.discord.requests == 1  # only the first, failed try


async def test_an_unresolvable_webhook_host_is_retried(world: World) -> None:
    bot, _ = await posted_bot(world, "alice")
    world.discord.fail_always = True
    await run(world, bot)
    await world.pool.execute("UPDATE notification_outbox SET next_attempt_at = now()")

    async def failing(host: str, port: int) -> Iterable[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    strict = OutboxSender(
        world.pool, world.http, world.cipher, allow_private_urls=False, policy=FAST, resolver=failing
    )
    await world.pool.execute(
        "UPDATE bots SET discord_webhook_url_enc = $2 WHERE id = $1",
        bot,
        world.cipher.encrypt("https://nowhere.example/api/webhooks/1/t"),
    )
    (event, *_) = (await strict.drain(bot, max_wait_seconds=0)).events

    assert event.outcome == "retrying"
    assert event.reason == "webhook URL host nowhere.example cannot be resolved"


async def test_a_bot_whose_webhook_was_removed_fails_its_pending_messages(world: World) -> None:
    bot, _ = await posted_bot(world, "alice")
    world.discord.fail_always = True
    await run(world, bot)
    await world.pool.execute(
        "UPDATE bots SET discord_webhook_url_enc = NULL, discord_webhook_url_hint = NULL WHERE id = $1", bot
    )
    await world.pool.execute("UPDATE notification_outbox SET next_attempt_at = now()")

    (event,) = (await sender(world).drain(bot)).events

    assert (event.outcome, event.reason) == ("failed", "the bot has no Discord webhook URL any more")


async def test_send_notifications_is_a_registered_task_type_that_reports_counts(world: World) -> None:
    from activities.handlers.registry import TASK_TYPES

    assert "send_notifications" in TASK_TYPES
    bot, _ = await posted_bot(world, "alice", "bob")
    world.discord.answers.extend([500, 500])
    await run(world, bot)  # both tries fail: retried in 10 s
    await world.pool.execute("UPDATE notification_outbox SET next_attempt_at = now()")

    result = await SendNotificationsHandler(world.deps).run(world.ctx(bot, "send_notifications"))

    assert result == {"notifications_sent": 2, "notifications_retrying": 0, "notifications_failed": 0}
    assert len(world.discord.messages) == 2


async def _profile(world: World, bot_id: str) -> Any:
    from xbot.storage.bots import load_bot

    return await load_bot(world.pool, bot_id)


async def test_a_429_holds_back_the_bots_other_messages_and_endless_429s_end(world: World) -> None:
    bot, _ = await posted_bot(world, "alice", "bob")
    world.discord.fail_always = True
    await run(world, bot)  # both queued, both waiting for a retry
    world.discord.fail_always = False
    await world.pool.execute("UPDATE notification_outbox SET next_attempt_at = now()")
    world.discord.rate_limit(0.05, times=100)
    before = world.discord.requests

    first = await sender(world).drain(bot, max_wait_seconds=0)

    # One 429 and the other message waits too, rather than meeting a 429 of its own.
    assert [e.outcome for e in first.events] == ["retrying"] and world.discord.requests == before + 1
    assert {row["wait"].total_seconds() > 0 for row in await outbox_rows(world, bot)} == {True}

    endless = await sender(world, RetryPolicy(max_attempts=3)).drain(bot, max_wait_seconds=1)

    assert endless.count("failed") == 2
    assert {row["last_error"] for row in await outbox_rows(world, bot)} == {
        "rate limited by Discord (retry after 0.05 s); gave up after 3 attempts"
    }
    assert world.discord.messages == []
