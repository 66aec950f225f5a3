"""What the routes share: settings, the database pool, the Temporal client and the live-feed hub."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg
from starlette.requests import HTTPConnection
from temporalio.client import Client

from api.errors import ServiceUnavailable
from xbot.bot_control import StatusResult
from xbot.crypto.at_rest import TokenCipher
from xbot.settings import Settings
from xbot.singleflight import SingleFlight
from xbot.temporal import connect_temporal

if TYPE_CHECKING:
    from api.feed import FeedHub

log = logging.getLogger(__name__)

TEMPORAL_CONNECT_TIMEOUT_SECONDS = 5.0
# Short enough that a change made outside the API (a CLI signal) shows well within a second.
STATUS_FRESH_SECONDS = 0.25


class TemporalConnector:
    """The Temporal client, connected at start when possible and on first use otherwise.

    The API must start (and /healthz must say what is down) even while Temporal is unreachable.
    """

    def __init__(self, settings: Settings, client: Client | None = None) -> None:
        self._settings = settings
        self._client = client
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> Client | None:
        return self._client

    async def get(self) -> Client:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await asyncio.wait_for(
                        connect_temporal(self._settings), TEMPORAL_CONNECT_TIMEOUT_SECONDS
                    )
                except Exception as error:
                    log.warning(
                        "cannot connect to Temporal at %s: %s", self._settings.temporal_address, error
                    )
                    raise ServiceUnavailable("Temporal is unavailable") from None
        return self._client


@dataclass(frozen=True)
class RenderedStatus:
    """A status answer and its JSON, rendered once however many callers share it: a reused answer
    costs no validation or serialization."""

    answer: StatusResult
    body: bytes


@dataclass
class ApiState:
    settings: Settings
    api_token: str
    temporal: TemporalConnector
    hub: FeedHub
    cipher: TokenCipher | None
    pool_or_none: asyncpg.Pool | None = None
    task_queue: str = ""
    feed_ping_interval: float = 25.0
    # GET /status: one read per bot at a time, reused this long (changes made here forget it).
    status_flights: SingleFlight[RenderedStatus] = field(
        default_factory=lambda: SingleFlight(fresh_for=STATUS_FRESH_SECONDS)
    )

    @property
    def pool(self) -> asyncpg.Pool:
        if self.pool_or_none is None:
            raise ServiceUnavailable("database is unavailable")
        return self.pool_or_none


def api_state(connection: HTTPConnection) -> ApiState:
    state: ApiState = connection.app.state.api
    return state
