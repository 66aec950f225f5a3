"""`GET /healthz` (no auth): database and Temporal, each checked with a short timeout."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.state import api_state
from xbot.storage.pool import database_answers

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_SECONDS = 2.0


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]
    temporal: Literal["ok"]


class HealthDown(BaseModel):
    error: str
    status: Literal["unavailable"]
    database: Literal["ok", "down"]
    temporal: Literal["ok", "down"]


async def _database_ok(request: Request) -> bool:
    pool = api_state(request).pool_or_none
    if pool is None:
        return False
    try:
        return await asyncio.wait_for(database_answers(pool), CHECK_TIMEOUT_SECONDS)
    except Exception as error:
        log.warning("health: database check failed: %s", error)
        return False


async def _temporal_ok(request: Request) -> bool:
    async def check() -> bool:
        client = await api_state(request).temporal.get()
        return await client.service_client.check_health(timeout=timedelta(seconds=CHECK_TIMEOUT_SECONDS))

    try:
        return await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS + 0.5)
    except Exception as error:
        log.warning("health: Temporal check failed: %s", error)
        return False


@router.get("/healthz", response_model=Health, responses={503: {"model": HealthDown, "description": "Down"}})
async def healthz(request: Request) -> JSONResponse:
    """`{"status": "ok", ...}`, or 503 naming what is down. Never waits more than a few seconds."""
    database, temporal = await asyncio.gather(_database_ok(request), _temporal_ok(request))
    if database and temporal:
        return JSONResponse({"status": "ok", "database": "ok", "temporal": "ok"})
    down = [name for name, ok in (("database", database), ("temporal", temporal)) if not ok]
    return JSONResponse(
        {
            "error": f"{' and '.join(down)} down",
            "status": "unavailable",
            "database": "ok" if database else "down",
            "temporal": "ok" if temporal else "down",
        },
        status_code=503,
    )
