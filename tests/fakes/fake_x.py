"""A stateful fake of the X API v2 and its OAuth 2.0 token endpoint, for the real httpx client.

State: users, posts, the bot's mentions (added over time by tests), valid access tokens and the one
valid refresh token (rotated on every refresh), per-endpoint rate windows sent as `x-rate-limit-*`
headers (429 when spent), and queued faults per endpoint: 5xx, hangs (client timeouts), malformed
bodies, and "accept then fail" for posts X created while the client never heard back.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from twitter_text import parse_tweet

FaultKind = Literal[
    "500",
    "503",
    "hang",
    "malformed",
    "accept_then_500",
    "accept_then_hang",
    "401",
    "rotate_then_hang",
    "empty",
]
CLIENT_ID = "fake-client-id"
CLIENT_SECRET = "fake-client-secret"


def token_answer(access: str, refresh: str) -> dict[str, Any]:
    """X's answer to a successful token request (a new pair for two hours)."""
    return {
        "token_type": "bearer",
        "expires_in": 7200,
        "access_token": access,
        "refresh_token": refresh,
        "scope": "tweet.read tweet.write users.read offline.access",
    }


@dataclass
class RateWindow:
    limit: int
    remaining: int
    reset_at: datetime


@dataclass
class FakeApp:
    """One X app (client id): its 24-hour windows and usage caps bind every account using it."""

    daily_limit: int = 100_000
    daily: dict[str, RateWindow] = field(default_factory=dict)
    # endpoint -> the usage-capped problem's `period` ("Daily"/"Monthly") and `scope`
    caps: dict[str, tuple[str, str]] = field(default_factory=dict)


# Endpoints on which X also counts 24-hour allowances (`x-user-limit-24hour-*`, `x-app-limit-24hour-*`).
DAILY_LIMITED = frozenset({"create_post"})
USAGE_CAPPED = "https://api.twitter.com/2/problems/usage-capped"


@dataclass
class Recorded:
    endpoint: str
    method: str
    path: str
    query: dict[str, str]
    authorization: str | None


@dataclass
class FakeX:
    bot_user_id: str = "1000"
    bot_username: str = "helperbot"
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    posts: dict[str, dict[str, Any]] = field(default_factory=dict)
    media: dict[str, dict[str, Any]] = field(default_factory=dict)  # media_key -> X's media object
    access_tokens: set[str] = field(default_factory=set)
    refresh_token: str | None = None
    refresh_calls: int = 0
    refresh_delay: float = 0.0
    invalid_refresh_error: str = "invalid_grant"
    # Token endpoint: a public (PKCE-only) client sends client_id in the body and no Authorization.
    public_client: bool = False
    spent_refresh_tokens: set[str] = field(default_factory=set)
    token_answered: asyncio.Event = field(default_factory=asyncio.Event)  # set once an answer was sent
    rate: dict[str, RateWindow] = field(default_factory=dict)
    faults: dict[str, list[FaultKind]] = field(default_factory=dict)
    hang_seconds: float = 3.0
    duplicate_style: Literal["v2", "code187"] = "v2"
    rate_headers: bool = True
    requests: list[Recorded] = field(default_factory=list)
    posts_per_mention: Counter[str] = field(default_factory=Counter)
    # 24-hour allowances: per X user (the token's owner, `token_users`) and per app, shareable.
    x_app: FakeApp = field(default_factory=FakeApp)
    daily_user_limit: int = 10_000
    daily_user: dict[tuple[str, str], RateWindow] = field(default_factory=dict)
    token_users: dict[str, str] = field(default_factory=dict)
    suspended: set[str] = field(default_factory=set)  # user ids: their posts are resource-unavailable
    # OAuth 2.0 authorize page (PKCE): what the user answers, the scopes granted (None: those asked),
    # and the codes issued, each with its S256 challenge; a code works once.
    authorize_answer: Literal["approve", "deny"] = "approve"
    granted_scope: str | None = None
    auth_codes: dict[str, dict[str, str]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1_700_000_000_000_000_000))
    _token_serial: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.add_user(self.bot_user_id, self.bot_username, "Helper Bot")

    # --- test-side helpers ------------------------------------------------------------------------

    def add_user(self, user_id: str, username: str, name: str | None = None, **extra: Any) -> None:
        self.users[user_id] = {"id": user_id, "username": username, "name": name or username, **extra}

    def add_post(
        self,
        author_id: str,
        text: str,
        *,
        in_reply_to: str | None = None,
        at: datetime | None = None,
        media: list[dict[str, Any]] | None = None,
    ) -> str:
        """`media`: X media objects (type, url or preview_image_url, alt_text); keys are made up."""
        post_id = str(next(self._ids))
        post: dict[str, Any] = {
            "id": post_id,
            "text": text,
            "author_id": author_id,
            "created_at": (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "edit_history_tweet_ids": [post_id],
        }
        if media:
            keys = [f"3_{post_id}{index}" for index in range(len(media))]
            self.media.update(
                {key: {"media_key": key, **item} for key, item in zip(keys, media, strict=True)}
            )
            post["attachments"] = {"media_keys": keys}
        if in_reply_to:
            post["referenced_tweets"] = [{"type": "replied_to", "id": in_reply_to}]
            post["conversation_id"] = self.posts.get(in_reply_to, {}).get("conversation_id", in_reply_to)
        else:
            post["conversation_id"] = post_id
        self.posts[post_id] = post
        return post_id

    def mention(
        self,
        author_id: str,
        text: str | None = None,
        *,
        in_reply_to: str | None = None,
        at: datetime | None = None,
        media: list[dict[str, Any]] | None = None,
    ) -> str:
        """A new post by `author_id` mentioning the bot (posted `at`, default now)."""
        text = text or f"@{self.bot_username} hello"
        return self.add_post(author_id, text, in_reply_to=in_reply_to, at=at, media=media)

    def issue_tokens(self) -> tuple[str, str]:
        serial = next(self._token_serial)
        access, refresh = f"access-{serial}-secretvalue", f"refresh-{serial}-secretvalue"
        self.access_tokens.add(access)
        self.refresh_token = refresh
        return access, refresh

    def cap(self, endpoint: str, period: str = "Monthly", scope: str = "Product") -> None:
        """The app's usage cap is spent: every request to `endpoint` gets X's usage-capped 429."""
        self.x_app.caps[endpoint] = (period, scope)

    def inject(self, endpoint: str, *kinds: FaultKind) -> None:
        self.faults.setdefault(endpoint, []).extend(kinds)

    def requests_to(self, endpoint: str) -> list[Recorded]:
        return [r for r in self.requests if r.endpoint == endpoint]

    def replies_by_bot(self, mention_id: str) -> list[dict[str, Any]]:
        return [
            p
            for p in self.posts.values()
            if p["author_id"] == self.bot_user_id
            and {"type": "replied_to", "id": mention_id} in p.get("referenced_tweets", [])
        ]

    # --- plumbing ---------------------------------------------------------------------------------

    def _mentions_of_bot(self, user_id: str | None = None) -> list[dict[str, Any]]:
        """Posts naming the user (the bot by default; any user added with `add_user`, so several
        bots can share one fake X)."""
        user = self.users.get(user_id or self.bot_user_id)
        tag = f"@{user['username'] if user else self.bot_username}"
        return [p for p in self.posts.values() if tag in p["text"]]

    def _window_headers(self, endpoint: str) -> tuple[dict[str, str], bool]:
        """Headers for this response and whether the window was already spent (=> 429)."""
        now = datetime.now(UTC)
        window = self.rate.get(endpoint)
        if window is None or window.reset_at <= now:
            window = self.rate[endpoint] = RateWindow(900, 900, now + timedelta(minutes=15))
        spent = window.remaining <= 0
        if not spent:
            window.remaining -= 1
        if not self.rate_headers:
            return {}, False
        headers = {
            "x-rate-limit-limit": str(window.limit),
            "x-rate-limit-remaining": str(window.remaining),
            "x-rate-limit-reset": str(int(window.reset_at.timestamp())),
        }
        return headers, spent

    def _daily_headers(self, endpoint: str, user_id: str, count: bool) -> tuple[dict[str, str], bool]:
        """24-hour headers (user, app) on posting endpoints, and whether either was already spent."""
        if endpoint not in DAILY_LIMITED or not self.rate_headers:
            return {}, False
        now = datetime.now(UTC)
        user = self.daily_user.get((user_id, endpoint))
        if user is None or user.reset_at <= now:
            user = self.daily_user[(user_id, endpoint)] = RateWindow(
                self.daily_user_limit, self.daily_user_limit, now + timedelta(hours=24)
            )
        app = self.x_app.daily.get(endpoint)
        if app is None or app.reset_at <= now:
            app = self.x_app.daily[endpoint] = RateWindow(
                self.x_app.daily_limit, self.x_app.daily_limit, now + timedelta(hours=24)
            )
        spent = user.remaining <= 0 or app.remaining <= 0
        if count and not spent:
            user.remaining -= 1
            app.remaining -= 1
        headers = {
            f"x-{who}-limit-24hour-{name}": value
            for who, window in (("user", user), ("app", app))
            for name, value in (
                ("limit", str(window.limit)),
                ("remaining", str(window.remaining)),
                ("reset", str(int(window.reset_at.timestamp()))),
            )
        }
        return headers, spent

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/2/oauth2/token", self._token, methods=["POST"]),
                Route("/i/oauth2/authorize", self._authorize, methods=["GET"]),
                Route("/2/users/me", self._endpoint("users_me", self._me), methods=["GET"]),
                Route("/2/users", self._endpoint("users_lookup", self._users), methods=["GET"]),
                Route("/2/users/{id}/mentions", self._endpoint("mentions", self._mentions), methods=["GET"]),
                Route(
                    "/2/users/{id}/tweets", self._endpoint("user_tweets", self._user_posts), methods=["GET"]
                ),
                Route("/2/tweets/{id}", self._endpoint("tweet_lookup", self._lookup), methods=["GET"]),
                Route("/2/tweets", self._endpoint("tweets_lookup", self._lookup_many), methods=["GET"]),
                Route("/2/tweets", self._endpoint("create_post", self._create), methods=["POST"]),
            ]
        )

    def _endpoint(self, name: str, handler: Any) -> Any:
        async def route(request: Request) -> Response:
            auth = request.headers.get("authorization")
            self.requests.append(
                Recorded(name, request.method, request.url.path, dict(request.query_params), auth)
            )
            faults = self.faults.get(name) or []
            fault = faults.pop(0) if faults else None
            token = auth.removeprefix("Bearer ") if auth else None
            if fault == "401" or token not in self.access_tokens:
                return JSONResponse({"title": "Unauthorized", "status": 401, "detail": "Unauthorized"}, 401)
            headers, spent = self._window_headers(name)
            user_id = self.token_users.get(token or "", self.bot_user_id)
            capped = name in self.x_app.caps
            daily, daily_spent = self._daily_headers(name, user_id, count=not (spent or capped))
            headers |= daily
            if capped:
                period, scope = self.x_app.caps[name]
                problem = {
                    "title": "UsageCapExceeded",
                    "detail": f"Usage cap exceeded: {period} {scope.lower()} cap",
                    "type": USAGE_CAPPED,
                    "period": period,
                    "scope": scope,
                }
                return JSONResponse(problem, 429, headers=headers)
            if spent or daily_spent:
                return JSONResponse({"title": "Too Many Requests", "status": 429}, 429, headers=headers)
            if fault in ("500", "503"):
                return JSONResponse({"title": "Service Unavailable"}, int(fault), headers=headers)
            if fault == "hang":
                await asyncio.sleep(self.hang_seconds)
                return JSONResponse({"title": "too late"}, 503)
            if fault == "malformed":
                return Response('{"data": [ {"id": ', 200, media_type="application/json", headers=headers)
            if fault == "empty":  # 200 without posts: a timeline whose index lags behind
                return JSONResponse({"meta": {"result_count": 0}}, 200, headers=headers)
            body, status = await handler(request)
            if fault == "accept_then_500":
                return JSONResponse({"title": "Internal Error"}, 500, headers=headers)
            if fault == "accept_then_hang":
                await asyncio.sleep(self.hang_seconds)
            return JSONResponse(body, status, headers=headers)

        return route

    def _page(self, posts: list[dict[str, Any]], query: dict[str, str], expand: bool) -> dict[str, Any]:
        posts = sorted(posts, key=lambda p: int(p["id"]), reverse=True)
        if "since_id" in query:
            posts = [p for p in posts if int(p["id"]) > int(query["since_id"])]
        if "until_id" in query:
            posts = [p for p in posts if int(p["id"]) < int(query["until_id"])]
        if "start_time" in query:
            start = datetime.fromisoformat(query["start_time"].replace("Z", "+00:00"))
            posts = [
                p for p in posts if datetime.fromisoformat(p["created_at"].replace("Z", "+00:00")) >= start
            ]
        if "pagination_token" in query:
            after = int(query["pagination_token"].removeprefix("next"))
            posts = [p for p in posts if int(p["id"]) < after]
        size = int(query.get("max_results", "10"))
        page, more = posts[:size], len(posts) > size
        body: dict[str, Any] = {"meta": {"result_count": len(page)}}
        if page:
            body["data"] = page
            body["meta"].update(newest_id=page[0]["id"], oldest_id=page[-1]["id"])
            if more:
                body["meta"]["next_token"] = f"next{page[-1]['id']}"
            if expand:
                body["includes"] = self._includes(page, query)
        return body

    def _includes(self, page: list[dict[str, Any]], query: dict[str, str] | None = None) -> dict[str, Any]:
        referenced = [
            self.posts[ref["id"]]
            for p in page
            for ref in p.get("referenced_tweets", [])
            if self._visible(ref["id"])
        ]
        author_ids = {p["author_id"] for p in [*page, *referenced]}
        includes: dict[str, Any] = {"users": [self.users[a] for a in sorted(author_ids) if a in self.users]}
        if referenced:
            includes["tweets"] = referenced
        query = query or {}
        if "attachments.media_keys" in query.get("expansions", "").split(","):
            # Like X: media_key and type always, the other fields only when asked for.
            fields = {"media_key", "type", *query.get("media.fields", "").split(",")}
            keys = [key for p in page for key in p.get("attachments", {}).get("media_keys", [])]
            media = [
                {name: value for name, value in self.media[key].items() if name in fields}
                for key in keys
                if key in self.media
            ]
            if media:
                includes["media"] = media
        return includes

    async def _me(self, request: Request) -> tuple[dict[str, Any], int]:
        return {"data": self.users[self.bot_user_id]}, 200

    async def _users(self, request: Request) -> tuple[dict[str, Any], int]:
        ids = request.query_params["ids"].split(",")
        found = [self.users[i] for i in ids if i in self.users]
        body: dict[str, Any] = {"data": found} if found else {}
        missing = [i for i in ids if i not in self.users]
        if missing:
            body["errors"] = [
                {
                    "value": i,
                    "detail": f"Could not find user with ids: [{i}].",
                    "title": "Not Found Error",
                    "resource_type": "user",
                    "parameter": "ids",
                    "resource_id": i,
                    "type": "https://api.twitter.com/2/problems/resource-not-found",
                }
                for i in missing
            ]
        return body, 200

    async def _mentions(self, request: Request) -> tuple[dict[str, Any], int]:
        mentions = self._mentions_of_bot(request.path_params.get("id"))
        return self._page(mentions, dict(request.query_params), expand=True), 200

    async def _user_posts(self, request: Request) -> tuple[dict[str, Any], int]:
        own = [p for p in self.posts.values() if p["author_id"] == request.path_params["id"]]
        return self._page(own, dict(request.query_params), expand=False), 200

    def _visible(self, post_id: str) -> bool:
        return post_id in self.posts and self.posts[post_id]["author_id"] not in self.suspended

    def _lookup_error(self, post_id: str, parameter: str) -> dict[str, Any]:
        """X's per-item problem: the author is suspended, or the post does not exist."""
        post = self.posts.get(post_id)
        if post is not None:
            return {
                "resource_id": post_id,
                "parameter": parameter,
                "resource_type": "tweet",
                "section": "data",
                "title": "Forbidden",
                "detail": f"User has been suspended: [{post['author_id']}].",
                "type": "https://api.twitter.com/2/problems/resource-unavailable",
            }
        return {
            "value": post_id,
            "detail": f"Could not find tweet with {parameter}: [{post_id}].",
            "title": "Not Found Error",
            "resource_type": "tweet",
            "parameter": parameter,
            "resource_id": post_id,
            "type": "https://api.twitter.com/2/problems/resource-not-found",
        }

    async def _lookup_many(self, request: Request) -> tuple[dict[str, Any], int]:
        """GET /2/tweets?ids=: 200 with the posts it can return and an error for each other."""
        ids = request.query_params["ids"].split(",")
        found = [self.posts[i] for i in ids if self._visible(i)]
        body: dict[str, Any] = {"data": found, "includes": self._includes(found)} if found else {}
        if errors := [self._lookup_error(i, "ids") for i in ids if not self._visible(i)]:
            body["errors"] = errors
        return body, 200

    async def _lookup(self, request: Request) -> tuple[dict[str, Any], int]:
        post = self.posts.get(request.path_params["id"])
        if post is not None and post["author_id"] in self.suspended:
            return {"errors": [self._lookup_error(post["id"], "id")]}, 200
        if post is None:
            post_id = request.path_params["id"]
            return {
                "errors": [
                    {
                        "value": post_id,
                        "detail": f"Could not find tweet with id: [{post_id}].",
                        "title": "Not Found Error",
                        "resource_type": "tweet",
                        "parameter": "id",
                        "resource_id": post_id,
                        "type": "https://api.twitter.com/2/problems/resource-not-found",
                    }
                ]
            }, 200
        return {"data": post, "includes": self._includes([post])}, 200

    async def _create(self, request: Request) -> tuple[dict[str, Any], int]:
        payload = await request.json()
        text = payload.get("text", "")
        target = (payload.get("reply") or {}).get("in_reply_to_tweet_id")
        if not text or not parse_tweet(text).valid:  # 280 as X counts them (twitter-text v3)
            return {
                "title": "Invalid Request",
                "detail": "One or more parameters to your request was invalid.",
                "errors": [{"message": "text is invalid"}],
            }, 400
        if target and target not in self.posts:
            return {
                "title": "Forbidden",
                "status": 403,
                "type": "about:blank",
                "detail": "You attempted to reply to a Tweet that is deleted or not visible to you.",
            }, 403
        # The token's owner posts (`token_users`; the bot by default).
        token = (request.headers.get("authorization") or "").removeprefix("Bearer ")
        author = self.token_users.get(token, self.bot_user_id)
        if any(p["author_id"] == author and p["text"] == text for p in self.posts.values()):
            if self.duplicate_style == "code187":
                return {"errors": [{"code": 187, "message": "Status is a duplicate."}]}, 403
            return {
                "title": "Forbidden",
                "status": 403,
                "type": "about:blank",
                "detail": "You are not allowed to create a Tweet with duplicate content.",
            }, 403
        post_id = self.add_post(author, text, in_reply_to=target)
        if target:
            self.posts_per_mention[target] += 1
        return {"data": {"id": post_id, "text": text, "edit_history_tweet_ids": [post_id]}}, 201

    def _token_client_ok(self, authorization: str | None, form: dict[str, str]) -> bool:
        """Confidential clients use Basic auth; public ones send only client_id in the body (X's docs)."""
        if self.public_client:
            return authorization is None and form.get("client_id") == CLIENT_ID
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        return authorization == f"Basic {expected}"

    async def _token(self, request: Request) -> Response:
        self.requests.append(Recorded("token", "POST", request.url.path, {}, None))
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        if not self._token_client_ok(request.headers.get("authorization"), form):
            return JSONResponse({"error": "invalid_client"}, 401)
        faults = self.faults.get("token") or []
        fault = faults.pop(0) if faults else None
        if fault == "500":
            return JSONResponse({"error": "server_error"}, 500)
        if fault == "hang":  # the request is lost before X acts on it: the refresh token still works
            await asyncio.sleep(self.hang_seconds)
            return JSONResponse({"error": "temporarily_unavailable"}, 503)
        if form.get("grant_type") == "authorization_code":
            return self._authorization_code(form)
        presented = form.get("refresh_token")
        if presented in self.spent_refresh_tokens:
            description = "Value passed for the token was invalid."
            return JSONResponse({"error": "invalid_grant", "error_description": description}, 400)
        if form.get("grant_type") != "refresh_token" or presented is None or presented != self.refresh_token:
            description = "Value passed for the token was invalid."
            return JSONResponse({"error": self.invalid_refresh_error, "error_description": description}, 400)
        self.refresh_calls += 1
        self.refresh_token = None  # the old one is spent the moment X accepts it
        self.spent_refresh_tokens.add(presented)
        if self.refresh_delay:
            await asyncio.sleep(self.refresh_delay)
        access, refresh = self.issue_tokens()
        if fault == "rotate_then_hang":  # rotated, but the answer comes after the client gave up
            await asyncio.sleep(self.hang_seconds)
        return JSONResponse(
            token_answer(access, refresh),
            background=BackgroundTask(self.token_answered.set),
        )

    async def _authorize(self, request: Request) -> Response:
        """X's consent page, answered at once: back to `redirect_uri` with a code (or access_denied)."""
        query = dict(request.query_params)
        self.requests.append(Recorded("authorize", "GET", request.url.path, query, None))
        required = ("response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge")
        if (
            any(not query.get(name) for name in required)
            or query["response_type"] != "code"
            or query["client_id"] != CLIENT_ID
            or query.get("code_challenge_method") != "S256"
        ):
            return Response("Something went wrong: invalid authorization request", 400)
        if self.authorize_answer == "deny":
            answer = {"error": "access_denied", "state": query["state"]}
        else:
            code = f"code-{next(self._token_serial)}"
            self.auth_codes[code] = {
                "challenge": query["code_challenge"],
                "redirect_uri": query["redirect_uri"],
                "scope": self.granted_scope if self.granted_scope is not None else query["scope"],
            }
            answer = {"state": query["state"], "code": code}
        return Response(status_code=302, headers={"location": f"{query['redirect_uri']}?{urlencode(answer)}"})

    def _authorization_code(self, form: dict[str, str]) -> Response:
        """The code (once), with the verifier whose S256 hash is the challenge and the same redirect_uri."""
        grant = self.auth_codes.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if (
            grant is None
            or grant["challenge"] != challenge
            or grant["redirect_uri"] != form.get("redirect_uri")
        ):
            description = "Value passed for the authorization code was invalid."
            return JSONResponse({"error": "invalid_request", "error_description": description}, 400)
        access, refresh = self.issue_tokens()
        body: dict[str, Any] = {
            "token_type": "bearer",
            "expires_in": 7200,
            "access_token": access,
            "scope": grant["scope"],
        }
        if "offline.access" in grant["scope"].split():
            body["refresh_token"] = refresh
        else:
            self.refresh_token = None
        return JSONResponse(body)
