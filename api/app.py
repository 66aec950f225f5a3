"""The FastAPI application: control API, live feed, metrics, health and the dashboard.

`create_app()` with no arguments is the process entry point (`xbot api`, uvicorn `--factory`): it
reads the settings and refuses to start with one line when a needed setting is missing. Tests pass
settings, and may pass an existing pool and Temporal client (then the app neither migrates nor
closes them).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import asyncpg
from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from temporalio.client import Client

from api.auth import require_token
from api.errors import ErrorBody, install_error_handlers
from api.feed import Event, FeedHub, LogSource, StatusSource, log_event
from api.limits import DEFAULT_MAX_BODY_BYTES, BodySizeLimit, RequestTimeout
from api.routes import (
    bots,
    connect,
    health,
    history,
    llm,
    metrics,
    notifications,
    quota,
    replies,
    reply_policy,
    tasks,
    ws,
)
from api.state import ApiState, TemporalConnector
from workflows.models import SchedulerStatus
from xbot import bot_control
from xbot.bots import encrypt_plain_webhook_urls
from xbot.crypto.at_rest import TokenCipher, TokenCipherError
from xbot.log_setup import guard_handlers
from xbot.settings import Settings, SettingsError, settings_or_exit
from xbot.storage import logs as logs_table
from xbot.storage.migrate import migrate
from xbot.storage.pool import create_pool, resolve_database_url, stop_embedded_postgres

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
FEED_QUERY_TIMEOUT = timedelta(seconds=2)
REQUEST_TIMEOUT_SECONDS = 30.0


def _api_token(settings: Settings) -> str:
    if settings.api_token is not None and settings.api_token.get_secret_value():
        return settings.api_token.get_secret_value()
    if settings.xbot_env == "development":
        token = secrets.token_urlsafe(24)
        log.warning("API_TOKEN is not set; this development API accepts the generated token %s", token)
        return token
    raise SettingsError("missing setting API_TOKEN (every route but /healthz requires it)")


def _cipher(settings: Settings) -> TokenCipher | None:
    if settings.token_encryption_key is None:
        return None
    try:
        return TokenCipher(settings.token_encryption_key.get_secret_value())
    except TokenCipherError as error:
        raise SettingsError(str(error)) from None


def _status_source(temporal: TemporalConnector) -> StatusSource:
    async def source(bot_id: str) -> SchedulerStatus | None:
        client = await temporal.get()
        return await bot_control.query_status(client, bot_id, FEED_QUERY_TIMEOUT, open_only=True)

    return source


def _log_source(state: ApiState) -> LogSource:
    async def logs_after(bot_id: str, after: int | None) -> tuple[int, list[Event]]:
        pool = state.pool
        if after is None:  # a new poller starts at the present, with no backlog
            return await logs_table.latest_log_id(pool, bot_id), []
        rows = await logs_table.logs_after(pool, bot_id, after)
        events = [
            log_event(bot_id, row["id"], row["created_at"], row["level"], row["content"]) for row in rows
        ]
        return (rows[-1]["id"] if rows else after), events

    return logs_after


def _openapi(app: FastAPI) -> dict[str, object]:
    """The generated schema, with every validation error documented as our `{"error"}` body."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schema.setdefault("components", {}).setdefault("schemas", {})["ErrorBody"] = ErrorBody.model_json_schema()
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            if "422" in responses:
                error_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
                responses["422"] = {"description": "Invalid request", "content": error_body}
                # A value pydantic accepts but PostgreSQL refuses (a NUL character in text).
                responses.setdefault("400", {"description": "Invalid value", "content": error_body})
    schema["components"]["schemas"].pop("HTTPValidationError", None)
    schema["components"]["schemas"].pop("ValidationError", None)
    app.openapi_schema = schema
    return schema


def create_app(
    settings: Settings | None = None,
    *,
    pool: asyncpg.Pool | None = None,
    temporal_client: Client | None = None,
    feed_poll_interval: float = 0.5,
    feed_queue_size: int = 256,
    feed_ping_interval: float = 25.0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    request_timeout: float = REQUEST_TIMEOUT_SECONDS,
) -> FastAPI:
    entry_point = settings is None
    try:
        settings = settings or settings_or_exit()
        api_token = _api_token(settings)
        cipher = _cipher(settings)
    except SettingsError as error:
        if entry_point:
            print(f"xbot api: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        raise

    temporal = TemporalConnector(settings, temporal_client)
    hub = FeedHub(_status_source(temporal), poll_interval=feed_poll_interval, queue_size=feed_queue_size)
    state = ApiState(
        settings=settings,
        api_token=api_token,
        temporal=temporal,
        hub=hub,
        cipher=cipher,
        pool_or_none=pool,
        task_queue=settings.temporal_task_queue,
        feed_ping_interval=feed_ping_interval,
    )
    hub.set_log_source(_log_source(state))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        owned_pool: asyncpg.Pool | None = None
        if state.pool_or_none is None:
            dsn = await asyncio.to_thread(resolve_database_url, settings)
            applied = await migrate(dsn)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
            owned_pool = state.pool_or_none = await create_pool(dsn)
            if cipher is not None:
                await encrypt_plain_webhook_urls(owned_pool, cipher)
        try:
            await temporal.get()
        except Exception:
            log.warning("Temporal is not reachable yet; /healthz reports it and calls retry")
        if entry_point:
            # Everything loaded so far lives as long as the process: keep it out of the cyclic
            # collector's full passes, which otherwise stall every request for tens of milliseconds.
            gc.freeze()
        try:
            yield
        finally:
            await hub.close()
            if owned_pool is not None:
                await owned_pool.close()
                state.pool_or_none = None
                if settings.database_url is None:
                    # We started (or joined) the embedded server; it stops once nobody else uses it.
                    await asyncio.to_thread(stop_embedded_postgres)

    # uvicorn configured its loggers before calling this factory; the WebSocket's `?token=` must not
    # reach its access and handshake lines.
    guard_handlers("uvicorn", "uvicorn.error", "uvicorn.access")
    app = FastAPI(
        title="xbot scheduler API",
        version="0.1.0",
        description=(
            "Control and watch X bots scheduled by Temporal. Every route but `/healthz` needs "
            '`Authorization: Bearer <API_TOKEN>`. Errors are `{"error": "<message>"}`.'
        ),
        lifespan=lifespan,
    )
    app.state.api = state
    install_error_handlers(app)
    routers = (
        health,
        bots,
        connect,
        tasks,
        history,
        replies,
        reply_policy,
        llm,
        metrics,
        notifications,
        quota,
    )
    for module in routers:
        app.include_router(module.router)
    app.include_router(ws.router)
    _include_codec_routes(app, settings)
    _include_dashboard(app)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes, exempt_prefixes=("/codec/",))
    app.add_middleware(RequestTimeout, seconds=request_timeout)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _include_codec_routes(app: FastAPI, settings: Settings) -> None:
    """The Temporal codec server endpoints (for encrypted payloads in the Web UI), behind the token."""
    try:
        from api.codec_routes import codec_router
    except ImportError:  # pragma: no cover - optional until payload encryption is configured
        return
    app.include_router(codec_router(settings, dependencies=[Depends(require_token)]))


def _include_dashboard(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")
