"""The Temporal codec server protocol, so the Web UI and `temporal` CLI can show encrypted payloads.

`POST /codec/decode` and `POST /codec/encode` take and return `{"payloads": [...]}` in the
proto3-JSON shape the Web UI sends (metadata values and data base64-encoded). The Web UI calls
these from the browser, so cross-origin requests are answered here for the configured origins
only (`CODEC_CORS_ORIGINS`, comma-separated); a request from any other origin is refused.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response
from fastapi.params import Depends
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import PayloadCodec

from xbot.crypto.codec import PayloadDecryptionError, codec_from_settings

if TYPE_CHECKING:
    from xbot.settings import Settings

DEFAULT_CORS_ORIGINS = "http://localhost:8233"
MAX_BODY_BYTES = 8 * 1024 * 1024
_ALLOWED_HEADERS = "authorization, content-type, x-namespace"

_PAYLOADS_SCHEMA = {
    "type": "object",
    "required": ["payloads"],
    "properties": {
        "payloads": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "metadata": {
                        "type": "object",
                        "additionalProperties": {"type": "string", "format": "byte"},
                    },
                    "data": {"type": "string", "format": "byte"},
                },
            },
        }
    },
}
_OPENAPI = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": _PAYLOADS_SCHEMA}}},
    "responses": {
        "200": {
            "description": "The payloads, transformed",
            "content": {"application/json": {"schema": _PAYLOADS_SCHEMA}},
        },
        "400": {"description": "Malformed payloads, or a payload no configured key decrypts"},
        "403": {"description": "The request came from an origin not in CODEC_CORS_ORIGINS"},
    },
}


def parse_origins(value: str) -> tuple[str, ...]:
    return tuple(origin.strip().rstrip("/") for origin in value.split(",") if origin.strip())


class _Passthrough(PayloadCodec):
    """Without ENCRYPTION_KEY nothing is encrypted; the endpoints still answer, unchanged."""

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)


def _error(status: int, message: str, headers: dict[str, str]) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def build_codec_router(
    codec: PayloadCodec | None,
    *,
    allowed_origins: Sequence[str] = parse_origins(DEFAULT_CORS_ORIGINS),
    dependencies: Sequence[Depends] = (),
) -> APIRouter:
    """A router for `/codec/encode` and `/codec/decode`.

    `dependencies` (e.g. a bearer-token check) apply to the POST routes only: browsers send the
    CORS preflight without credentials, so it must be answered without them.
    """
    active: PayloadCodec = codec or _Passthrough()
    origins = {origin.rstrip("/") for origin in allowed_origins}
    router = APIRouter(prefix="/codec", tags=["codec"])

    def origin_allowed(origin: str | None) -> bool:
        # No Origin header: not a browser cross-origin call (CLI, curl, same-origin).
        return origin is None or "*" in origins or origin.rstrip("/") in origins

    def cors_headers(origin: str | None) -> dict[str, str]:
        if origin is None or not origin_allowed(origin):
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Vary": "Origin",
        }

    async def transform(
        request: Request, apply: Callable[[Sequence[Payload]], Awaitable[list[Payload]]]
    ) -> Response:
        origin = request.headers.get("origin")
        headers = cors_headers(origin)
        if not origin_allowed(origin):
            return _error(403, f"origin {origin} is not allowed (CODEC_CORS_ORIGINS)", headers)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return _error(413, f"body larger than {MAX_BODY_BYTES} bytes", headers)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _error(413, f"body larger than {MAX_BODY_BYTES} bytes", headers)
        message = Payloads()
        try:
            document = json.loads(body)
            if not isinstance(document, dict) or not isinstance(document.get("payloads"), list):
                raise ValueError("expected an object with a `payloads` array")
            json_format.ParseDict(document, message)
        except (json_format.ParseError, UnicodeDecodeError, ValueError, TypeError) as error:
            return _error(400, f'body must be {{"payloads": [...]}} in proto3 JSON: {error}', headers)
        try:
            result = await apply(message.payloads)
        except PayloadDecryptionError as error:
            return _error(400, str(error), headers)
        content = json_format.MessageToJson(
            Payloads(payloads=result), indent=None, always_print_fields_with_no_presence=True
        )
        return Response(content=content, media_type="application/json", headers=headers)

    def preflight(request: Request) -> Response:
        origin = request.headers.get("origin")
        if not origin_allowed(origin):
            return _error(403, f"origin {origin} is not allowed (CODEC_CORS_ORIGINS)", {})
        headers = cors_headers(origin)
        headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
        headers["Access-Control-Allow-Headers"] = (
            request.headers.get("access-control-request-headers") or _ALLOWED_HEADERS
        )
        headers["Access-Control-Max-Age"] = "600"
        return Response(status_code=204, headers=headers)

    @router.post(
        "/decode",
        dependencies=list(dependencies),
        openapi_extra=_OPENAPI,
        summary="Decrypt payloads (Temporal codec server protocol)",
    )
    async def decode(request: Request) -> Response:
        return await transform(request, active.decode)

    @router.post(
        "/encode",
        dependencies=list(dependencies),
        openapi_extra=_OPENAPI,
        summary="Encrypt payloads (Temporal codec server protocol)",
    )
    async def encode(request: Request) -> Response:
        return await transform(request, active.encode)

    router.add_api_route("/decode", preflight, methods=["OPTIONS"], include_in_schema=False)
    router.add_api_route("/encode", preflight, methods=["OPTIONS"], include_in_schema=False)
    return router


def codec_router(settings: Settings, dependencies: Sequence[Depends] = ()) -> APIRouter:
    """The codec router configured from `ENCRYPTION_KEY`, `CODEC_CORS_ORIGINS`, `CODEC_REQUIRE_TOKEN`.

    `dependencies` (the API token check) are dropped when `CODEC_REQUIRE_TOKEN=false`: the Web UI
    calls the codec from the browser and cannot send the API's bearer token.
    """
    # getattr: these settings are optional fields of Settings; absent, the safe defaults apply.
    origins = getattr(settings, "codec_cors_origins", None) or DEFAULT_CORS_ORIGINS
    if getattr(settings, "codec_require_token", True) is False:
        dependencies = ()
    return build_codec_router(
        codec_from_settings(settings), allowed_origins=parse_origins(origins), dependencies=dependencies
    )
