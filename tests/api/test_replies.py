"""Reply drafts: list by status, approve, reject, edit before approval."""

from __future__ import annotations

import asyncpg
import httpx

from tests.support.factories import insert_bot, insert_reply


async def test_list_approve_reject_edit(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    await insert_bot(pool, "b", approval_required=True)
    await insert_bot(pool, "other")
    first = await insert_reply(pool, "b", "100", mention="@b what time is it?")
    second = await insert_reply(pool, "b", "101")
    posted = await insert_reply(pool, "b", "102", status="posted")
    foreign = await insert_reply(pool, "other", "103")

    waiting = (await client.get("/bots/b/replies", params={"status": "pending_approval"})).json()
    assert {item["id"] for item in waiting["items"]} == {first, second}
    mention = next(item for item in waiting["items"] if item["id"] == first)
    assert mention["mention_text"] == "@b what time is it?" and mention["mention_author_username"] == "alice"

    edited = await client.patch(f"/bots/b/replies/{first}", json={"text": "  It is noon.  "})
    assert edited.status_code == 200 and edited.json()["text"] == "It is noon."
    too_long = await client.patch(f"/bots/b/replies/{first}", json={"text": "x" * 281})
    assert too_long.status_code == 422 and too_long.json()["error"].startswith("text:")

    approved = await client.post(f"/bots/b/replies/{first}/approve")
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    again = await client.post(f"/bots/b/replies/{first}/approve")
    assert again.status_code == 409 and "approved" in again.json()["error"]

    rejected = await client.post(f"/bots/b/replies/{second}/reject")
    assert rejected.json()["status"] == "rejected"
    assert (await client.patch(f"/bots/b/replies/{posted}", json={"text": "late"})).status_code == 409

    # Scoped to the bot: another bot's reply is not found through this one.
    assert (await client.post(f"/bots/b/replies/{foreign}/approve")).status_code == 404
    assert (await client.get(f"/bots/b/replies/{foreign}")).status_code == 404
    assert await pool.fetchval("SELECT status FROM post_replies WHERE id = $1", foreign) == "pending_approval"
    assert (await client.get("/bots/b/replies", params={"status": "pending_approval"})).json()["items"] == []


async def test_replies_pagination(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    await insert_bot(pool, "b")
    ids = [await insert_reply(pool, "b", str(200 + index), author=None) for index in range(5)]
    first = (await client.get("/bots/b/replies", params={"limit": 2})).json()
    second = (await client.get("/bots/b/replies", params={"limit": 2, "cursor": first["next_cursor"]})).json()
    third = (await client.get("/bots/b/replies", params={"limit": 2, "cursor": second["next_cursor"]})).json()
    seen = [item["id"] for page in (first, second, third) for item in page["items"]]
    assert sorted(seen) == ids and len(set(seen)) == 5 and third["next_cursor"] is None


async def test_a_reply_refused_as_duplicate_shows_why_and_an_edit_revives_it(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await insert_bot(pool, "d")
    refused = await insert_reply(pool, "d", "200", status="failed")
    await pool.execute(
        "UPDATE post_replies SET failure_kind = 'duplicate_content', error_message = 'duplicate' WHERE id = $1",
        refused,
    )

    shown = (await client.get(f"/bots/d/replies/{refused}")).json()
    assert shown["status"] == "failed" and shown["failure_kind"] == "duplicate_content"

    edited = (await client.patch(f"/bots/d/replies/{refused}", json={"text": "Something else."})).json()
    assert (
        edited["status"] == "approved" and edited["failure_kind"] is None and edited["error_message"] is None
    )
