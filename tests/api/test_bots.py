"""Bots CRUD: validation, tokens stored encrypted and never returned, patch semantics."""

from __future__ import annotations

import asyncpg
import httpx

from xbot.crypto.at_rest import TokenCipher
from xbot.settings import get_settings

ACCESS = "access-token-value-1234567890"
REFRESH = "refresh-token-value-0987654321"


async def test_create_read_list_patch_delete(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    created = await client.post(
        "/bots",
        json={
            "id": "helper.bot-1",
            "name": "Helper",
            "persona_prompt": "Kind and brief.",
            "plan_tier": "pro",
            "approval_required": True,
            "discord_webhook_url": "http://127.0.0.1:9/hook",
            "llm_temperature": 0.3,
        },
    )
    assert created.status_code == 201, created.text
    bot = created.json()
    assert bot["id"] == "helper.bot-1" and bot["plan_tier"] == "pro" and bot["approval_required"] is True
    assert bot["has_tokens"] is False and bot["scheduler_enabled"] is False and bot["auth_state"] == "ok"

    read = (await client.get("/bots/helper.bot-1")).json()
    assert read["name"] == "Helper" and read["isRunning"] is False and read["nextAlarmTime"] is None
    assert [item["id"] for item in (await client.get("/bots")).json()] == ["helper.bot-1"]

    patched = await client.patch("/bots/helper.bot-1", json={"name": "Renamed", "discord_webhook_url": None})
    assert patched.status_code == 200
    assert patched.json()["name"] == "Renamed" and patched.json()["discord_webhook_url"] is None
    assert patched.json()["persona_prompt"] == "Kind and brief."  # untouched fields keep their value

    assert (await client.patch("/bots/helper.bot-1", json={"name": None})).status_code == 422
    assert (await client.patch("/bots/helper.bot-1", json={"plan_tier": "gold"})).status_code == 422
    assert (await client.patch("/bots/nobody", json={"name": "x"})).status_code == 404

    assert (await client.delete("/bots/helper.bot-1")).status_code == 204
    assert (await client.get("/bots/helper.bot-1")).status_code == 404
    assert (await client.delete("/bots/helper.bot-1")).status_code == 404
    assert await pool.fetchval("SELECT count(*) FROM bots") == 0


async def test_duplicate_id_is_a_conflict(client: httpx.AsyncClient) -> None:
    assert (await client.post("/bots", json={"id": "b", "name": "one"})).status_code == 201
    again = await client.post("/bots", json={"id": "b", "name": "two"})
    assert again.status_code == 409 and again.json() == {"error": "bot b already exists"}


async def test_tokens_are_encrypted_at_rest_and_never_returned(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    created = await client.post(
        "/bots",
        json={
            "id": "tok",
            "name": "Tokens",
            "tokens": {
                "access_token": ACCESS,
                "refresh_token": REFRESH,
                "expires_at": "2030-01-01T00:00:00Z",
            },
        },
    )
    assert created.status_code == 201
    responses = [created, await client.get("/bots/tok"), await client.get("/bots")]
    for response in responses:
        assert ACCESS not in response.text and REFRESH not in response.text
    assert created.json()["has_tokens"] is True

    row = await pool.fetchrow(
        "SELECT access_token_enc, refresh_token_enc FROM bot_tokens WHERE bot_id = 'tok'"
    )
    assert ACCESS.encode() not in row["access_token_enc"]
    cipher = TokenCipher(get_settings().token_encryption_key.get_secret_value())  # type: ignore[union-attr]
    assert cipher.decrypt(row["access_token_enc"]) == ACCESS
    assert cipher.decrypt(row["refresh_token_enc"]) == REFRESH


async def test_llm_api_key_is_write_only_and_encrypted_at_rest(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    key = "sk-bot-own-llm-key-5678"
    created = await client.post(
        "/bots",
        json={"id": "llm", "name": "LLM", "llm_base_url": "http://127.0.0.1:9/v1", "llm_api_key": key},
    )
    assert created.status_code == 201, created.text
    assert created.json()["llm_api_key_set"] is True
    responses = [created, await client.get("/bots/llm"), await client.get("/bots")]
    assert all(key not in response.text and "llm_api_key_enc" not in response.text for response in responses)
    stored = await pool.fetchval("SELECT llm_api_key_enc FROM bots WHERE id = 'llm'")
    cipher = TokenCipher(get_settings().token_encryption_key.get_secret_value())  # type: ignore[union-attr]
    assert key.encode() not in stored and cipher.decrypt(stored) == key

    renamed = await client.patch("/bots/llm", json={"name": "Renamed"})
    assert renamed.json()["llm_api_key_set"] is True  # untouched unless named
    replaced = await client.patch("/bots/llm", json={"llm_api_key": "sk-another"})
    assert replaced.json()["llm_api_key_set"] is True and "sk-another" not in replaced.text
    assert (
        cipher.decrypt(await pool.fetchval("SELECT llm_api_key_enc FROM bots WHERE id = 'llm'"))
        == "sk-another"
    )
    cleared = await client.patch("/bots/llm", json={"llm_api_key": None})
    assert cleared.json()["llm_api_key_set"] is False
    assert await pool.fetchval("SELECT llm_api_key_enc FROM bots WHERE id = 'llm'") is None
    assert (await client.patch("/bots/llm", json={"llm_api_key": ""})).status_code in (400, 422)


async def test_new_tokens_end_needs_reauthorization(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    await client.post("/bots", json={"id": "re", "name": "Re"})
    await pool.execute("UPDATE bots SET auth_state = 'needs_reauthorization' WHERE id = 're'")
    patched = await client.patch("/bots/re", json={"tokens": {"access_token": "new-access"}})
    assert patched.status_code == 200
    assert patched.json()["auth_state"] == "ok" and patched.json()["has_tokens"] is True
    assert "new-access" not in patched.text


async def test_invalid_tokens_write_nothing(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    response = await client.post(
        "/bots",
        json={"id": "bad", "name": "Bad", "tokens": {"access_token": "a", "expires_at": "2030-01-01T00:00"}},
    )
    assert response.status_code == 422 and "time zone" in response.json()["error"]
    assert await pool.fetchval("SELECT count(*) FROM bots") == 0


async def test_text_postgres_refuses_is_a_400_and_writes_nothing(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    refused = await client.post("/bots", json={"id": "nul", "name": "n", "persona_prompt": "a\u0000b"})
    assert refused.status_code == 400
    assert refused.json()["error"].startswith("invalid value")
    assert await pool.fetchval("SELECT count(*) FROM bots") == 0
