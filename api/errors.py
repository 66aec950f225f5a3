"""Every non-2xx answer is `{"error": "<message>"}`: HTTP errors, validation errors, outages."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.service import RPCError, RPCStatusCode

from xbot.bot_control import WorkerUnavailable
from xbot.url_policy import UrlPolicyError

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    error: str


class ApiError(Exception):
    """Raised anywhere below a route to answer `status` with `{"error": message}`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class ServiceUnavailable(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(503, message)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _describe_validation(error: RequestValidationError) -> str:
    parts: list[str] = []
    for item in error.errors()[:5]:
        if item.get("type") == "json_invalid":
            parts.append("body: invalid JSON")
            continue
        location = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        message = str(item.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts) or "invalid request"


# Temporal answers these when the server (not the request) is the problem.
_TEMPORAL_OUTAGE = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.RESOURCE_EXHAUSTED,
}

# asyncpg raises these when the server is down or went away mid-request.
_DATABASE_OUTAGE: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.message, headers=error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        message = error.detail if isinstance(error.detail, str) else "request failed"
        return error_response(error.status_code, message, headers=getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, _describe_validation(error))

    @app.exception_handler(UrlPolicyError)
    async def _refused_url(_: Request, error: UrlPolicyError) -> JSONResponse:
        # Names the field and the host at most: never a path or query (they may hold secrets).
        return error_response(400, f"{error} (outbound URL policy; see XBOT_ALLOW_PRIVATE_URLS)")

    @app.exception_handler(RPCError)
    async def _temporal_error(_: Request, error: RPCError) -> JSONResponse:
        if error.status in _TEMPORAL_OUTAGE:
            return error_response(503, "Temporal is unavailable")
        log.exception("Temporal call failed")
        return error_response(502, f"Temporal call failed: {error.status.name}")

    @app.exception_handler(WorkerUnavailable)
    async def _no_worker(_: Request, error: WorkerUnavailable) -> JSONResponse:
        return error_response(503, f"{error} (is a worker running?)")

    @app.exception_handler(TimeoutError)
    async def _timeout(_: Request, error: TimeoutError) -> JSONResponse:
        return error_response(503, "a backing service did not answer in time")

    @app.exception_handler(asyncpg.exceptions.DataError)
    async def _bad_value(_: Request, error: asyncpg.exceptions.DataError) -> JSONResponse:
        # PostgreSQL refused a value pydantic let through (e.g. a NUL character in text).
        return error_response(
            400, f"invalid value: {error.args[0] if error.args else 'rejected by the database'}"
        )

    for outage in _DATABASE_OUTAGE:

        @app.exception_handler(outage)
        async def _database_down(_: Request, error: Any) -> JSONResponse:
            log.warning("database unavailable: %s", error)
            return error_response(503, "database is unavailable")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal error")
