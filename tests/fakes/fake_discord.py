"""A Discord webhook receiver: `POST /api/webhooks/{id}/{token}` answers 204 like Discord."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class FakeDiscord:
    messages: list[dict[str, Any]] = field(default_factory=list)
    fail_next: int = 0

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/api/webhooks/{id}/{token}", self._execute, methods=["POST"])])

    async def _execute(self, request: Request) -> Response:
        if self.fail_next > 0:
            self.fail_next -= 1
            return JSONResponse({"message": "500: Internal Server Error", "code": 0}, 500)
        self.messages.append(await request.json())
        return Response(status_code=204)
