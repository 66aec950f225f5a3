"""Async X API v2 client for one bot: OAuth 2.0 user token, the quota ledger, typed errors.

Every request (1) reserves a slot in each window of the quota ledger (`xbot.x.quota`) that binds it, or
is refused locally with `XRateLimitedError` when one is spent, (2) carries a timeout, (3) settles the
reservation with X's headers (or counts against the plan's static window when X sent none) and gives
the slot back when the request never left, and (4) maps failures to the types in `xbot.x.errors`
(`xbot.x.responses` reads X's answers).
A 401 triggers one token refresh and one retry.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from xbot.settings import Settings
from xbot.x import quota, quota_readings, rate_limits
from xbot.x.errors import (
    XApiError,
    XMalformedResponseError,
    XRateLimitedError,
    XServerError,
    XTimeoutError,
    XUnauthorizedError,
)
from xbot.x.responses import Page, body_or_error, object_field, object_list, raise_lookup_errors, read_page
from xbot.x.token_store import TokenStore
from xbot.x.tokens import AccessToken

log = logging.getLogger(__name__)
# Connection failures after which a read is sent once more (not timeouts: X may be slow, not gone).
BROKEN_CONNECTION = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.ConnectError)
BROKEN_CONNECTION_SENDS = 2

TWEET_FIELDS = (
    "attachments,author_id,conversation_id,created_at,in_reply_to_user_id,lang,referenced_tweets,text"
)
USER_FIELDS = "created_at,description,name,profile_image_url,protected,public_metrics,username,verified"
TWEET_EXPANSIONS = "author_id,referenced_tweets.id,referenced_tweets.id.author_id"
# Mentions also bring their images (`includes.media`), for the vision model and their alt text.
MENTION_EXPANSIONS = TWEET_EXPANSIONS + ",attachments.media_keys"
MEDIA_FIELDS = "type,url,preview_image_url,alt_text"
MAX_IDS_PER_LOOKUP = 100


def _timeline_params(max_results: int, **optional: str | None) -> dict[str, str | int]:
    """A page of posts (5 to 100 a request) with the fields we read; empty options are left out."""
    params: dict[str, str | int] = {"max_results": _clamp(max_results, 5, 100), "tweet.fields": TWEET_FIELDS}
    params.update({name: value for name, value in optional.items() if value})
    return params


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def x_time(moment: datetime) -> str:
    """RFC 3339 in the form X accepts for `start_time`/`end_time`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class XClient:
    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        pool: asyncpg.Pool,
        settings: Settings,
        tokens: TokenStore,
        bot_id: str,
        plan_tier: str,
    ) -> None:
        self._http = http
        self._pool = pool
        self._base_url = settings.x_api_base_url
        self._timeout = settings.x_request_timeout_seconds
        self._tokens = tokens
        self.bot_id = bot_id
        self._plan_tier = plan_tier
        self._app = quota.app_key(settings.x_client_id)
        # A slot outlives any request (connect, write, read and pool timeouts), then stops counting.
        self._lease = timedelta(seconds=4 * self._timeout + 30)

    # --- endpoints -------------------------------------------------------------------------------

    async def get_me(self) -> dict[str, Any]:
        body = await self._request("users_me", "GET", "/2/users/me", params={"user.fields": USER_FIELDS})
        return object_field(body, "data", "users_me")

    async def mentions(
        self,
        user_id: str,
        *,
        since_id: str | None = None,
        until_id: str | None = None,
        pagination_token: str | None = None,
        max_results: int = 100,
    ) -> Page:
        params = _timeline_params(
            max_results,
            expansions=MENTION_EXPANSIONS,
            **{"media.fields": MEDIA_FIELDS, "user.fields": USER_FIELDS},
            since_id=since_id,
            until_id=until_id,
            pagination_token=pagination_token,
        )
        body = await self._request("mentions", "GET", f"/2/users/{user_id}/mentions", params=params)
        return read_page(body, "mentions")

    async def user_posts(
        self,
        user_id: str,
        *,
        start_time: datetime | None = None,
        pagination_token: str | None = None,
        max_results: int = 100,
    ) -> Page:
        params = _timeline_params(
            max_results,
            start_time=x_time(start_time) if start_time is not None else None,
            pagination_token=pagination_token,
        )
        body = await self._request("user_tweets", "GET", f"/2/users/{user_id}/tweets", params=params)
        return read_page(body, "user_tweets")

    async def get_post(self, post_id: str) -> Page:
        params = {"tweet.fields": TWEET_FIELDS, "expansions": TWEET_EXPANSIONS, "user.fields": USER_FIELDS}
        body = await self._request("tweet_lookup", "GET", f"/2/tweets/{post_id}", params=params)
        if not isinstance(body.get("data"), dict):
            raise_lookup_errors("tweet_lookup", object_list(body.get("errors")))
        post = object_field(body, "data", "tweet_lookup")
        page = read_page({**body, "data": []}, "tweet_lookup")
        return Page([post], page.users, page.included_posts, None, page.errors)

    async def get_posts(self, post_ids: list[str]) -> Page:
        """Up to 100 posts in one request, with their authors and the posts they reference. X answers
        200 with the posts it can return and an `errors` entry for each it cannot (deleted, author
        suspended, protected): a partial answer, never an exception; see `missing_posts`."""
        if not 1 <= len(post_ids) <= MAX_IDS_PER_LOOKUP:
            raise ValueError(f"posts lookup takes 1 to {MAX_IDS_PER_LOOKUP} ids, got {len(post_ids)}")
        params = {
            "ids": ",".join(post_ids),
            "tweet.fields": TWEET_FIELDS,
            "expansions": TWEET_EXPANSIONS,
            "user.fields": USER_FIELDS,
        }
        # GET /2/tweets has the same per-plan limits as GET /2/tweets/{id}; tracked as one window.
        body = await self._request("tweet_lookup", "GET", "/2/tweets", params=params)
        return read_page(body, "tweet_lookup")

    async def users_by_ids(self, user_ids: list[str]) -> Page:
        """Profiles for up to 100 ids; ids X could not return are listed in `errors`."""
        if not 1 <= len(user_ids) <= MAX_IDS_PER_LOOKUP:
            raise ValueError(f"users lookup takes 1 to {MAX_IDS_PER_LOOKUP} ids, got {len(user_ids)}")
        params = {"ids": ",".join(user_ids), "user.fields": USER_FIELDS}
        body = await self._request("users_lookup", "GET", "/2/users", params=params)
        data = body.get("data", [])
        if not isinstance(data, list):
            raise XMalformedResponseError("users_lookup", "`data` is not a list")
        return Page([], users=data, errors=object_list(body.get("errors")))

    async def create_post(self, text: str, in_reply_to: str) -> str:
        """Post a reply; returns the new post id. Duplicate content raises XDuplicateContentError."""
        payload = {"text": text, "reply": {"in_reply_to_tweet_id": in_reply_to}}
        body = await self._request("create_post", "POST", "/2/tweets", json=payload)
        post_id = object_field(body, "data", "create_post").get("id")
        if not isinstance(post_id, str) or not post_id:
            raise XMalformedResponseError("create_post", "no post id in the response")
        return post_id

    # --- transport -------------------------------------------------------------------------------

    async def _request(
        self,
        key: str,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        token = await self._tokens.access_token(self.bot_id)
        response = await self._send(key, method, path, token, params, json)
        if response.status_code == 401:
            token = await self._tokens.refresh(self.bot_id, token.version)
            response = await self._send(key, method, path, token, params, json)
            if response.status_code == 401:
                reason = f"X answered 401 to {key} with a freshly refreshed token"
                await self._tokens.mark_needs_reauthorization(self._pool, self.bot_id, reason)
                raise XUnauthorizedError(key, "HTTP 401 after a token refresh", 401)
        return body_or_error(key, response)

    async def _reserve(self, key: str) -> quota.Reservation:
        try:
            return await quota.reserve(
                self._pool,
                bot_id=self.bot_id,
                app=self._app,
                endpoint=key,
                plan_tier=self._plan_tier,
                lease=self._lease,
            )
        except quota.QuotaExhausted as exhausted:
            raise XRateLimitedError(key, exhausted.reset_at, sent=False, reason=str(exhausted)) from None

    async def _send(
        self,
        key: str,
        method: str,
        path: str,
        token: AccessToken,
        params: dict[str, Any] | None,
        json: dict[str, Any] | None,
    ) -> httpx.Response:
        for attempt in range(1, BROKEN_CONNECTION_SENDS + 1):
            reservation = await self._reserve(key)
            probe = _SendProbe()
            try:
                response = await self._http.request(
                    method,
                    self._base_url + path,
                    params=params,
                    json=json,
                    headers={"Authorization": f"Bearer {token.value}"},
                    timeout=self._timeout,
                    extensions={"trace": probe.trace},
                )
            except BaseException as error:
                await self._close_unanswered(reservation, counted=probe.may_have_reached_x(error))
                # A keep-alive connection X had just closed breaks under the next request before
                # any answer. A read changes nothing at X, so it is sent once more; a write is left
                # to the caller's exactly-once recovery.
                if (
                    method == "GET"
                    and isinstance(error, BROKEN_CONNECTION)
                    and not probe.answered  # a response cut short is X's answer, not a stale connection
                    and attempt < BROKEN_CONNECTION_SENDS
                ):
                    log.info("X %s: connection broke (%s); sending the read again", key, type(error).__name__)
                    continue
                if isinstance(error, httpx.TimeoutException):
                    raise XTimeoutError(key, f"no answer within {self._timeout:g}s") from None
                if isinstance(error, httpx.HTTPError):
                    raise XServerError(key, f"request failed ({type(error).__name__})") from None
                raise
            await self._track(key, reservation, response)
            return response
        raise AssertionError("unreachable: the last send returns or raises")

    async def _close_unanswered(self, reservation: quota.Reservation, *, counted: bool) -> None:
        """No answer: count the request if X may have seen it, else give the slot back. Shielded, so a
        second cancellation cannot leave the slot taken; a database failure here must not hide the
        request's own error (the slot's lease frees it)."""
        closing = (
            quota.settle(self._pool, reservation, None) if counted else quota.release(self._pool, reservation)
        )
        try:
            await asyncio.shield(closing)
        except Exception as error:
            log.warning("quota slot of %s %s left to its lease: %s", self.bot_id, reservation.endpoint, error)

    async def _track(self, key: str, reservation: quota.Reservation, response: httpx.Response) -> None:
        body: Any = None
        if response.status_code == 429:
            try:
                body = response.json()
            except ValueError:
                body = None
        observation = quota_readings.read_response(
            response.status_code,
            response.headers,
            body,
            static=rate_limits.static_limit(self._plan_tier, key),
            now=datetime.now(UTC),
        )
        await quota.settle(self._pool, reservation, observation)
        if response.status_code == 429:
            assert observation.retry_at is not None
            raise XRateLimitedError(key, observation.retry_at, sent=True, reason=observation.reason)


class _SendProbe:
    """Watches httpcore's trace events to tell whether a failed request ever started going out."""

    # Failures that happen before any byte of the request is written.
    NOT_SENT: tuple[type[BaseException], ...] = (
        httpx.ConnectError,
        httpx.ConnectTimeout,
        httpx.PoolTimeout,
        httpx.UnsupportedProtocol,
    )

    def __init__(self) -> None:
        self.traced = False
        self.sending = False
        self.answered = False  # X began its response (headers arrived)

    async def trace(self, event: str, info: dict[str, Any]) -> None:
        self.traced = True
        if event.endswith("send_request_headers.started"):
            self.sending = True
        elif event.endswith("receive_response_headers.complete"):
            self.answered = True

    def may_have_reached_x(self, error: BaseException) -> bool:
        if self.sending:
            return True
        if self.traced:  # the transport reports its steps and never began sending
            return False
        return not isinstance(error, (asyncio.CancelledError, *self.NOT_SENT))


__all__ = ["MAX_IDS_PER_LOOKUP", "XApiError", "XClient", "x_time"]
