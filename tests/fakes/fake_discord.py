"""A Discord webhook receiver: `POST /api/webhooks/{id}/{token}` answers 204 like Discord.

On demand it answers like Discord under pressure: `rate_limit(...)` queues 429s with `retry_after` in
the JSON body (seconds, a float) and/or the `Retry-After` header, `fail_next` queues 500s and
`fail_always` is an outage. Every request is counted (`requests`); `messages` holds the delivered ones
and `delivered_at` when each arrived.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass(frozen=True)
class RateLimit:
    retry_after: float
    in_body: bool = True
    in_header: bool = True


@dataclass
class FakeDiscord:
    messages: list[dict[str, Any]] = field(default_factory=list)
    delivered_at: list[float] = field(default_factory=list)  # time.monotonic() of each delivery
    fail_next: int = 0  # this many 500s first
    fail_status: int = 500
    fail_always: bool = False
    latency: float = 0.0
    requests: int = 0
    answers: list[int | RateLimit] = field(default_factory=list)  # queued answers, then 204s
    answered: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, status)
    webhooks: list[str] = field(default_factory=list)  # "{id}/{token}" of each delivery
    # Called on each request; what it returns is kept in `observed` (e.g. what another fake saw by then).
    observe: Callable[[], Any] | None = None
    observed: list[Any] = field(default_factory=list)

    def rate_limit(
        self, retry_after: float, *, times: int = 1, in_body: bool = True, in_header: bool = True
    ) -> None:
        self.answers.extend([RateLimit(retry_after, in_body, in_header)] * times)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/api/webhooks/{id}/{token}", self._execute, methods=["POST"])])

    def _answer(self, status: int) -> int:
        self.answered.append((time.monotonic(), status))
        return status

    async def _execute(self, request: Request) -> Response:
        self.requests += 1
        if self.observe is not None:
            self.observed.append(self.observe())
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.answers:
            answer = self.answers.pop(0)
            if isinstance(answer, RateLimit):
                return self._rate_limited(answer)
            if answer >= 300:
                return JSONResponse({"message": f"HTTP {answer}", "code": 0}, self._answer(answer))
        elif self.fail_always or self.fail_next > 0:
            self.fail_next = max(0, self.fail_next - 1)
            return JSONResponse(
                {"message": "500: Internal Server Error", "code": 0}, self._answer(self.fail_status)
            )
        self.messages.append(await request.json())
        self.delivered_at.append(time.monotonic())
        self.webhooks.append(f"{request.path_params['id']}/{request.path_params['token']}")
        return Response(status_code=self._answer(204))

    def _rate_limited(self, limit: RateLimit) -> Response:
        # Discord's shape (RatelimitedResponse in its OpenAPI spec) and its rate-limit headers.
        body: dict[str, Any] = {"message": "You are being rate limited.", "global": False}
        if limit.in_body:
            body["retry_after"] = limit.retry_after
        headers = {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0", "X-RateLimit-Scope": "shared"}
        if limit.in_header:
            headers["Retry-After"] = str(math.ceil(limit.retry_after))
        return JSONResponse(body, self._answer(429), headers=headers)
