"""Fakes for many bots at once, with the extra knobs the chaos tests need.

`ChaosX` is the stateful fake X of `tests/fakes/fake_x.py` for one bot account, plus: tokens that
look real and are unique across bots, a latency per request, short rate windows with whole-second
resets (as X sends them), a log of every request against its window, and two more faults
(`not_json`: a 200 with an HTML body; `truncated`: the connection closes mid-body).

`FleetX` serves many `ChaosX` accounts on one port, like X does: each request goes to the account
whose access token it carries; `POST /2/oauth2/token` goes to the account whose refresh token it
carries (Basic auth with this fleet's client id and secret).

`ChaosLlm` is the OpenAI-compatible fake with its own key, latency, and one distinct reply per
mention (X refuses identical posts).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from tests.fakes.fake_llm import API_KEY as FAKE_LLM_KEY
from tests.fakes.fake_llm import FakeLlm
from tests.fakes.fake_x import FakeX, RateWindow, Recorded, token_answer


def whole_second(moment: datetime) -> datetime:
    """X's `x-rate-limit-reset` is whole epoch seconds; windows end exactly there."""
    return datetime.fromtimestamp(math.ceil(moment.timestamp()), UTC)


@dataclass(frozen=True)
class WindowHit:
    """One request as the rate window saw it: `spent` means it was answered 429."""

    endpoint: str
    reset_at: datetime
    limit: int
    spent: bool
    at: float


@dataclass
class ChaosX(FakeX):
    tag: str = "x"
    latency: float = 0.0
    # endpoint -> (limit, seconds): short windows instead of X's 15 minutes.
    windows: dict[str, tuple[int, float]] = field(default_factory=dict)
    window_log: list[WindowHit] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)

    def issue_tokens(self) -> tuple[str, str]:
        access = f"{secrets.token_urlsafe(30)}{self.tag}A"
        refresh = f"{secrets.token_urlsafe(30)}{self.tag}R"
        self.access_tokens.add(access)
        self.refresh_token = refresh
        self.issued += [access, refresh]
        return access, refresh

    def inject_faults(self, endpoint: str, *kinds: str) -> None:
        """Like `inject`, also with this class's own kinds (`not_json`, `truncated`)."""
        self.faults.setdefault(endpoint, []).extend(kinds)  # type: ignore[arg-type]

    def storm(self, endpoint: str, seconds: float, limit: int = 1) -> datetime:
        """The window is spent right now (the bot cannot know) until a whole second `seconds` away."""
        reset_at = whole_second(datetime.now(UTC) + timedelta(seconds=seconds))
        self.rate[endpoint] = RateWindow(limit, 0, reset_at)
        return reset_at

    def _window_headers(self, endpoint: str) -> tuple[dict[str, str], bool]:
        now = datetime.now(UTC)
        window = self.rate.get(endpoint)
        if window is None or window.reset_at <= now:
            limit, seconds = self.windows.get(endpoint, (900, 900.0))
            window = self.rate[endpoint] = RateWindow(
                limit, limit, whole_second(now + timedelta(seconds=seconds))
            )
        spent = window.remaining <= 0
        if not spent:
            window.remaining -= 1
        self.window_log.append(WindowHit(endpoint, window.reset_at, window.limit, spent, time.time()))
        headers = {
            "x-rate-limit-limit": str(window.limit),
            "x-rate-limit-remaining": str(window.remaining),
            "x-rate-limit-reset": str(int(window.reset_at.timestamp())),
        }
        return headers, spent

    def _endpoint(self, name: str, handler: Any) -> Any:
        inner = super()._endpoint(name, handler)

        async def route(request: Request) -> Response:
            if self.latency:
                await asyncio.sleep(self.latency)
            queued = self.faults.get(name) or []
            if queued and queued[0] in ("not_json", "truncated"):
                kind = queued.pop(0)
                auth = request.headers.get("authorization")
                self.requests.append(
                    Recorded(name, request.method, request.url.path, dict(request.query_params), auth)
                )
                headers, _ = self._window_headers(name)
                if kind == "not_json":
                    return Response(
                        "<html>Over capacity</html>", 200, media_type="text/html", headers=headers
                    )
                return TruncatedResponse(headers)
            response: Response = await inner(request)
            return response

        return route


def _quiet_truncation(record: logging.LogRecord) -> bool:
    """uvicorn logs the aborted response as an application error; it is the point of the fault."""
    error = record.exc_info[1] if record.exc_info else None
    return not (isinstance(error, ConnectionAbortedError) and TRUNCATED in str(error))


logging.getLogger("uvicorn.error").addFilter(_quiet_truncation)
TRUNCATED = "fake X cut the response short"


class TruncatedResponse(Response):
    """Promises 4096 bytes, sends 20, then drops the connection (the server sees an error)."""

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__(b"", 200, headers=headers, media_type="application/json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k.encode(), v.encode()) for k, v in self.headers.items() if k != "content-length"]
        headers.append((b"content-length", b"4096"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"data": [{"id": "1', "more_body": True})
        raise ConnectionAbortedError(TRUNCATED)


class FleetX:
    """Many X accounts behind one base URL, told apart by the tokens each request carries."""

    def __init__(self, client_id: str, client_secret: str) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.accounts: dict[str, ChaosX] = {}
        self._apps: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self.token_calls: list[tuple[str, int]] = []  # (account tag, HTTP status)
        # (bearer token, arrival time) of requests answered 401: unknown at arrival, or revoked
        # while the request waited out the account's latency (the account's own app refuses those).
        self.refused_bearers: list[tuple[str, float]] = []

    def account(self, tag: str, **knobs: Any) -> ChaosX:
        """A new X account; its posts and users have ids that no other account uses."""
        number = next(self._ids)
        fake = ChaosX(
            bot_user_id=str(10_000 + number),
            bot_username=f"chaosbot{number}",
            tag=tag,
            _ids=itertools.count(1_800_000_000_000_000_000 + number * 10_000_000),
            **knobs,
        )
        self.accounts[tag] = fake
        self._apps[tag] = fake.app()
        return fake

    def revoke(self, tag: str) -> None:
        """The user revoked the app: every token of the account stops working at once."""
        fake = self.accounts[tag]
        fake.access_tokens.clear()
        fake.refresh_token = None

    def all_issued_tokens(self) -> list[str]:
        return [token for fake in self.accounts.values() for token in fake.issued]

    def app(self) -> Any:
        token_app = Starlette(routes=[Route("/2/oauth2/token", self._token, methods=["POST"])])

        async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                return
            if scope["path"] == "/2/oauth2/token":
                await token_app(scope, receive, send)
                return
            headers = dict(scope["headers"])
            bearer = headers.get(b"authorization", b"").decode().removeprefix("Bearer ")
            arrived = time.time()
            for tag, fake in self.accounts.items():
                if bearer in fake.access_tokens:

                    async def noting_refusals(message: Message) -> None:
                        if message["type"] == "http.response.start" and message["status"] == 401:
                            self.refused_bearers.append((bearer, arrived))
                        await send(message)

                    with contextlib.suppress(ClientDisconnect):  # a killed worker hung up mid-request
                        await self._apps[tag](scope, receive, noting_refusals)
                    return
            self.refused_bearers.append((bearer, arrived))
            body = JSONResponse({"title": "Unauthorized", "status": 401, "detail": "Unauthorized"}, 401)
            await body(scope, receive, send)

        return dispatch

    async def _token(self, request: Request) -> Response:
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if request.headers.get("authorization") != f"Basic {expected}":
            return JSONResponse({"error": "invalid_client"}, 401)
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        presented = form.get("refresh_token")
        fake = next((f for f in self.accounts.values() if presented and f.refresh_token == presented), None)
        if form.get("grant_type") != "refresh_token" or fake is None:
            owner = next((f.tag for f in self.accounts.values() if presented in f.issued), "?")
            self.token_calls.append((owner, 400))
            description = "Value passed for the token was invalid."
            return JSONResponse({"error": "invalid_grant", "error_description": description}, 400)
        fake.refresh_calls += 1
        fake.requests.append(Recorded("token", "POST", request.url.path, {}, None))
        fake.refresh_token = None  # spent the moment X accepts it
        access, refresh = fake.issue_tokens()
        self.token_calls.append((fake.tag, 200))
        return JSONResponse(token_answer(access, refresh))


@dataclass
class ChaosLlm(FakeLlm):
    api_key: str = field(default_factory=lambda: "sk-proj-" + secrets.token_urlsafe(32))
    latency: float = 0.0

    def app(self) -> Starlette:
        inner = super().app()
        expected = f"Bearer {self.api_key}".encode()

        async def keyed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                # The fake checks its own constant key: swap ours for it, refuse anything else.
                headers = [(k, v) for k, v in scope["headers"] if k != b"authorization"]
                presented = dict(scope["headers"]).get(b"authorization")
                if presented == expected:
                    headers.append((b"authorization", f"Bearer {FAKE_LLM_KEY}".encode()))
                scope = {**scope, "headers": headers}
                if self.latency:
                    await asyncio.sleep(self.latency)
            with contextlib.suppress(ClientDisconnect):  # a killed worker hung up mid-request
                await inner(scope, receive, send)

        return keyed  # type: ignore[return-value]

    async def _complete(self, request: Request) -> JSONResponse:
        response = await super()._complete(request)
        if response.status_code != 200 or not self.requests:
            return response
        # One distinct reply per mention: X refuses a bot's identical posts as duplicates.
        mention = self.requests[-1]["messages"][-1]["content"].rsplit("\n", 1)[-1]
        body = json.loads(bytes(response.body))
        content = body["choices"][0]["message"]["content"]
        if content:
            digest = hashlib.sha256(mention.encode()).hexdigest()[:8]
            body["choices"][0]["message"]["content"] = f"{content} [{digest}]"
        return JSONResponse(body)
