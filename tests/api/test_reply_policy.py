"""Reply policy through the API: read, replace, validation, skipped mentions, opt-outs, spend, metrics."""

from __future__ import annotations

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.factories import insert_bot, insert_reply


async def test_read_and_replace_a_policy(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    await insert_bot(pool, "p")
    await insert_bot(pool, "sibling")
    await pool.execute("UPDATE bots SET x_user_id = '777' WHERE id = 'sibling'")

    default = (await client.get("/bots/p/reply-policy")).json()
    assert default["opt_out_words"] == ["stop", "unsubscribe"] and default["allow_links"] is False
    assert default["operator_bot_ids"] == ["777"] and default["skip_operator_bots"] is True

    body = {"max_replies_per_author_per_day": 2, "languages": ["EN", "de"], "banned_words": ["Scam"]}
    saved = await client.put("/bots/p/reply-policy", json=body)
    assert saved.status_code == 200
    assert saved.json()["languages"] == ["en", "de"] and saved.json()["banned_words"] == ["scam"]
    assert (await client.get("/bots/p/reply-policy")).json()["max_replies_per_author_per_day"] == 2


async def test_bad_policies_get_422_and_lose_nothing(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    await insert_bot(pool, "p")
    assert (await client.put("/bots/p/reply-policy", json={"min_followers": 5})).status_code == 200
    for bad in (
        {"max_replies_per_day": -1},
        {"languages": ["not a language"]},
        {"never_answer_user_ids": ["@alice"]},
        {"surprise": 1},
        [],
    ):
        answer = await client.put("/bots/p/reply-policy", json=bad)
        assert answer.status_code == 422, bad
        assert "error" in answer.json()
    assert (await client.get("/bots/p/reply-policy")).json()["min_followers"] == 5
    assert (await client.put("/bots/nobody/reply-policy", json={})).status_code == 404
    # Written around the API: a clear 409, and a PUT repairs it.
    await pool.execute("UPDATE bot_reply_policies SET policy = '{\"min_followers\": -1}' WHERE bot_id = 'p'")
    broken = await client.get("/bots/p/reply-policy")
    assert broken.status_code == 409 and "PUT" in broken.json()["error"]
    assert (await client.put("/bots/p/reply-policy", json={})).status_code == 200


async def test_skipped_mentions_opt_outs_spend_and_metrics(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await insert_bot(pool, "s")
    await pool.execute("INSERT INTO x_users (x_user_id, username) VALUES ('42', 'alice')")
    await pool.execute(
        "INSERT INTO pulled_posts (bot_id, x_post_id, author_x_user_id, text, skipped_reason, skipped_code)"
        " VALUES ('s', '10', '42', '@s stop', 'author 42 asked the bot to stop', 'opted_out'),"
        "        ('s', '11', '42', '@s again', 'already 5 replies', 'author_cap'),"
        "        ('s', '12', '42', '@s old', 'before the new bot''s backfill_hours (2 h)', NULL)"
    )
    await pool.execute(
        "INSERT INTO bot_opted_out_authors (bot_id, x_user_id, word) VALUES ('s', '42', 'stop')"
    )
    filtered = await insert_reply(pool, "s", "13", status="rejected_by_filter")

    page = (await client.get("/bots/s/mentions/skipped")).json()
    assert {(item["x_post_id"], item["skipped_code"]) for item in page["items"]} == {
        ("10", "opted_out"),
        ("11", "author_cap"),
        ("12", "backlog"),
    }
    assert page["items"][0]["author_username"] == "alice"
    only = (await client.get("/bots/s/mentions/skipped", params={"code": "author_cap"})).json()["items"]
    assert [item["x_post_id"] for item in only] == ["11"]
    assert (await client.get("/bots/s/mentions/skipped", params={"code": "Bad Code"})).status_code == 422

    listed = (await client.get("/bots/s/replies", params={"status": "rejected_by_filter"})).json()["items"]
    assert [item["id"] for item in listed] == [filtered]

    assert [o["x_user_id"] for o in (await client.get("/bots/s/opt-outs")).json()] == ["42"]
    assert (await client.delete("/bots/s/opt-outs/42")).status_code == 204
    assert (await client.delete("/bots/s/opt-outs/42")).status_code == 404

    await pool.execute(
        "INSERT INTO bot_llm_usage (bot_id, day, tokens_in, tokens_out, calls) VALUES ('s', current_date, 1000, 200, 3)"
    )
    spend = (await client.get("/bots/s/spend")).json()
    assert (spend["tokens_in"], spend["tokens_out"], spend["llm_calls"]) == (1000, 200, 3)
    assert abs(spend["llm_cost_usd"] - (1000 * 0.15 + 200 * 0.6) / 1e6) < 1e-9

    text = (await client.get("/metrics")).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("xbot_mentions_skipped_total", (("bot_id", "s"), ("reason", "author_cap")))] == 1
    assert samples[("xbot_mentions_skipped_total", (("bot_id", "s"), ("reason", "backlog")))] == 1
    assert samples[("xbot_replies_rejected_by_filter_total", (("bot_id", "s"),))] == 1
    assert samples[("xbot_llm_tokens_total", (("bot_id", "s"), ("direction", "in")))] == 1000

    # The operator's own text is trusted: an edit revives the draft (the bot posts without approval).
    revived = await client.patch(f"/bots/s/replies/{filtered}", json={"text": "Thanks, see you soon."})
    assert revived.status_code == 200 and revived.json()["status"] == "approved"
