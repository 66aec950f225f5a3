"""`/llm-configs` and `/prompts`: CRUD, validation, write-only keys, references from task definitions,
and which template, version and model wrote a draft (`/bots/{id}/replies`)."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import httpx
import pytest

from tests.api.test_outbound_urls import strict  # noqa: F401 - the API refusing private addresses
from tests.support.factories import insert_bot, insert_reply

KEY = "sk-api-test-config-key-0123456789"


async def _config(client: httpx.AsyncClient, **fields: Any) -> httpx.Response:
    body = {"name": "fast", "model": "gpt-fast", "base_url": "https://llm.example.com/v1", **fields}
    return await client.post("/llm-configs", json=body)


async def test_llm_config_crud_never_returns_the_key(
    client: httpx.AsyncClient, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await _config(client, api_key=KEY, temperature=0.5, max_tokens=200)
    assert created.status_code == 201, created.text
    config = created.json()
    assert config["has_api_key"] is True and config["temperature"] == 0.5 and config["max_tokens"] == 200
    assert "api_key" not in config and "api_key_enc" not in config
    stored = await pool.fetchval("SELECT api_key_enc FROM llm_configs WHERE id = $1", config["id"])
    assert stored is not None and KEY.encode() not in stored  # encrypted at rest

    listed = (await client.get("/llm-configs")).json()
    assert [item["id"] for item in listed] == [config["id"]]
    assert (await client.get(f"/llm-configs/{config['id']}")).json() == config

    patched = await client.patch(
        f"/llm-configs/{config['id']}", json={"model": "gpt-slow", "temperature": None}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["model"] == "gpt-slow" and patched.json()["temperature"] is None
    assert patched.json()["has_api_key"] is True  # untouched
    cleared = await client.patch(f"/llm-configs/{config['id']}", json={"api_key": None})
    assert cleared.json()["has_api_key"] is False

    schema = (await client.get("/openapi.json")).text
    for response in (created, patched, cleared, await client.get("/llm-configs")):
        assert KEY not in response.text
    assert KEY not in schema and KEY not in caplog.text

    assert (await client.delete(f"/llm-configs/{config['id']}")).status_code == 204
    assert (await client.get(f"/llm-configs/{config['id']}")).status_code == 404
    assert (await client.delete(f"/llm-configs/{config['id']}")).status_code == 404


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"name": ""}, "name"),
        ({"model": None}, "model"),
        ({"base_url": "ftp://llm.example.com"}, "base_url"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": "0.5"}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"api_key": ""}, "api_key"),
        ({"surprise": 1}, "surprise"),
    ],
)
async def test_llm_config_validation(client: httpx.AsyncClient, fields: dict[str, Any], says: str) -> None:
    refused = await _config(client, **fields)
    assert refused.status_code == 422, refused.text
    assert says in refused.json()["error"]
    assert (await client.get("/llm-configs")).json() == []  # nothing saved


async def test_llm_config_names_are_unique(client: httpx.AsyncClient) -> None:
    assert (await _config(client)).status_code == 201
    taken = await _config(client)
    assert taken.status_code == 409 and "already exists" in taken.json()["error"]
    other = await _config(client, name="other")
    assert (
        await client.patch(f"/llm-configs/{other.json()['id']}", json={"name": "fast"})
    ).status_code == 409
    assert (await client.patch(f"/llm-configs/{other.json()['id']}", json={"name": None})).status_code == 422


async def test_llm_config_base_url_follows_the_outbound_url_policy(strict: httpx.AsyncClient) -> None:  # noqa: F811
    refused = await _config(strict, name="local", base_url="http://127.0.0.1:8080/v1")
    assert refused.status_code == 400 and "base_url: host 127.0.0.1" in refused.json()["error"]
    assert "outbound URL policy" in refused.json()["error"]
    created = await _config(strict, name="public", base_url="http://93.184.215.14/v1")
    assert created.status_code == 201, created.text
    patched = await strict.patch(
        f"/llm-configs/{created.json()['id']}", json={"base_url": "http://10.0.0.1/v1"}
    )
    assert patched.status_code == 400
    assert (await strict.get(f"/llm-configs/{created.json()['id']}")).json()[
        "base_url"
    ] == "http://93.184.215.14/v1"


async def test_prompt_crud_versions_and_placeholder_validation(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/prompts", json={"name": "kind", "system_text": "You are {persona}. {mention}"}
    )
    assert created.status_code == 201, created.text
    prompt = created.json()
    assert prompt["version"] == 1 and prompt["placeholders"] == ["persona", "mention"]

    renamed = await client.patch(f"/prompts/{prompt['id']}", json={"name": "kinder"})
    assert renamed.json()["version"] == 1
    edited = await client.patch(f"/prompts/{prompt['id']}", json={"system_text": "Be {persona}, {{briefly}}"})
    assert edited.json()["version"] == 2 and edited.json()["system_text"] == "Be {persona}, {{briefly}}"
    again = await client.patch(f"/prompts/{prompt['id']}", json={"system_text": "Be {persona}, {{briefly}}"})
    assert again.json()["version"] == 2  # the same text is not a new version

    for text, says in [
        ("Hi {persona} {secret}", "unknown placeholder {secret}"),
        ("{mention.__class__}", "unknown placeholder {mention.__class__}"),
        ("{persona!r}", "conversion or format spec"),
        ("{persona:>99999}", "conversion or format spec"),
        ("unbalanced {", "literal braces"),
    ]:
        refused = await client.patch(f"/prompts/{prompt['id']}", json={"system_text": text})
        assert refused.status_code == 422 and says in refused.json()["error"], (text, refused.text)
    assert (await client.get(f"/prompts/{prompt['id']}")).json()["version"] == 2  # nothing lost

    refused = await client.post("/prompts", json={"name": "bad", "system_text": "{tweet}"})
    assert refused.status_code == 422 and "{tweet}" in refused.json()["error"]
    taken = await client.post("/prompts", json={"name": "kinder", "system_text": "x"})
    assert taken.status_code == 409
    assert [p["name"] for p in (await client.get("/prompts")).json()] == ["kinder"]
    assert (await client.delete(f"/prompts/{prompt['id']}")).status_code == 204
    assert (await client.get(f"/prompts/{prompt['id']}")).status_code == 404


async def test_task_definitions_reference_existing_configs_and_prompts(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await insert_bot(pool, "b")
    config_id = (await _config(client)).json()["id"]
    vision_id = (await _config(client, name="eyes", model="gpt-vision")).json()["id"]
    prompt_id = (await client.post("/prompts", json={"name": "p", "system_text": "{persona}"})).json()["id"]

    async def define(config: dict[str, Any]) -> httpx.Response:
        body = {"task_type": "generate_replys", "interval_minutes": 5, "config": config}
        return await client.post("/bots/b/tasks", json=body)

    # The seed's field names, as a seed user's definitions carry them.
    seed = {
        "llm_config_id": config_id,
        "prompt_id": str(prompt_id),
        "vision_config": {"vision_llm_config_id": vision_id, "vision_prompt_id": prompt_id},
    }
    created = await define(seed)
    assert created.status_code == 201, created.text
    assert created.json()["config"] == seed

    for config, says in [
        ({"llm_config_id": 99999}, "config.llm_config_id: no LLM configuration 99999"),
        ({"prompt_id": 99999}, "config.prompt_id: no prompt template 99999"),
        ({"vision_config": {"vision_llm_config_id": 99999}}, "config.vision_config.vision_llm_config_id"),
        (
            {"vision_config": {"vision_llm_config_id": vision_id, "vision_prompt_id": 99999}},
            "vision_prompt_id",
        ),
        ({"vision_config": {}}, "config.vision_config.vision_llm_config_id: required"),
        ({"vision_config": {"vision_llm_config_id": vision_id, "extra": 1}}, "config.vision_config.extra"),
        ({"llm_config_id": "fast"}, "config.llm_config_id"),
        ({"prompt_id": 0}, "config.prompt_id"),
    ]:
        refused = await define(config)
        assert refused.status_code == 422 and says in refused.json()["error"], (config, refused.text)
    patched = await client.patch(
        f"/bots/b/tasks/{created.json()['id']}", json={"config": {"prompt_id": 99999}}
    )
    assert patched.status_code == 422 and "no prompt template 99999" in patched.json()["error"]

    # In use: deleting is refused and names the definition; once unused, it goes.
    for path in (f"/llm-configs/{config_id}", f"/llm-configs/{vision_id}", f"/prompts/{prompt_id}"):
        refused = await client.delete(path)
        assert refused.status_code == 409 and f"b/{created.json()['id']}" in refused.json()["error"]
    await client.patch(f"/bots/b/tasks/{created.json()['id']}", json={"config": {}})
    for path in (f"/llm-configs/{config_id}", f"/llm-configs/{vision_id}", f"/prompts/{prompt_id}"):
        assert (await client.delete(path)).status_code == 204


async def test_replies_show_which_template_version_and_model_wrote_them(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await insert_bot(pool, "b")
    prompt_id = (await client.post("/prompts", json={"name": "kind", "system_text": "{persona}"})).json()[
        "id"
    ]
    reply_id = await insert_reply(pool, "b", "555")
    await pool.execute(
        "UPDATE post_replies SET prompt_template_id = $2, prompt_version = 3, llm_model = 'gpt-fast',"
        " llm_config_id = 7 WHERE id = $1",
        reply_id,
        prompt_id,
    )
    await pool.execute(
        "UPDATE pulled_posts SET image_description = 'a cat', vision_error = NULL WHERE x_post_id = '555'"
    )
    [item] = (await client.get("/bots/b/replies")).json()["items"]
    assert item["prompt_template_id"] == prompt_id and item["prompt_template_name"] == "kind"
    assert item["prompt_version"] == 3 and item["llm_model"] == "gpt-fast" and item["llm_config_id"] == 7
    assert item["image_description"] == "a cat" and item["vision_error"] is None
