"""X's OAuth 2.0 token endpoint (`POST /2/oauth2/token`): the client's credentials, and a refresh
call that tells a refusal for good from an answer that never came.

Public clients (no `X_CLIENT_SECRET`) send `client_id` in the form; confidential ones use Basic auth.
A token response's body is never echoed: only X's OAuth error code.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from xbot.errors import NonRetryableTaskError
from xbot.settings import Settings
from xbot.x.errors import XRateLimitedError, XServerError, XTimeoutError

TOKEN_PATH = "/2/oauth2/token"
TOKEN_ENDPOINT = "POST /2/oauth2/token"


class AnswerLost(Exception):
    """The refresh request may have reached X, but no usable answer arrived."""


def client_auth(settings: Settings, purpose: str) -> tuple[str, httpx.Auth | None]:
    """The client id, and Basic auth for a confidential client (None: a public one)."""
    client_id = settings.x_client_id
    if not client_id:
        raise NonRetryableTaskError(f"X_CLIENT_ID must be set to {purpose}")
    secret = settings.x_client_secret
    if secret is None or not secret.get_secret_value():
        return client_id, None  # a public (PKCE-only) client
    return client_id, httpx.BasicAuth(client_id, secret.get_secret_value())


async def refresh(
    http: httpx.AsyncClient, settings: Settings, refresh_token: str, *, call_seconds: float
) -> dict[str, Any] | str:
    """The new token body, or the reason X gave for refusing the refresh token for good. Raises
    `AnswerLost` when the request may have reached X but no usable answer came within `call_seconds`."""
    client_id, auth = client_auth(settings, "refresh tokens")
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if auth is None:
        form["client_id"] = client_id  # X's docs: public clients name themselves in the body
    try:
        async with asyncio.timeout(call_seconds):
            response = await http.post(
                settings.x_api_base_url + TOKEN_PATH,
                data=form,
                auth=auth if auth is not None else httpx.Auth(),  # httpx.Auth(): no header at all
                timeout=settings.x_request_timeout_seconds,
            )
    except (httpx.ConnectTimeout, httpx.PoolTimeout):
        raise XTimeoutError(TOKEN_ENDPOINT, "timed out before the request was sent") from None
    except (httpx.ConnectError, httpx.UnsupportedProtocol) as error:
        raise XServerError(TOKEN_ENDPOINT, f"request not sent ({type(error).__name__})") from None
    except (httpx.TimeoutException, TimeoutError):
        raise AnswerLost("timed out waiting for the answer") from None
    except httpx.HTTPError as error:
        raise AnswerLost(f"no answer ({type(error).__name__})") from None
    return _token_outcome(response)


def _token_outcome(response: httpx.Response) -> dict[str, Any] | str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 200:
        if isinstance(body, dict) and isinstance(body.get("access_token"), str):
            return body
        # X accepted the refresh token (200) but we cannot read the new one: as good as no answer.
        raise AnswerLost("malformed token response")
    if response.status_code == 429:
        reset = response.headers.get("x-rate-limit-reset", "")
        reset_at = (
            datetime.fromtimestamp(int(reset), UTC)
            if reset.isdigit()
            else datetime.now(UTC) + timedelta(minutes=1)
        )
        raise XRateLimitedError(TOKEN_ENDPOINT, reset_at, sent=True)
    if response.status_code >= 500:
        raise XServerError(TOKEN_ENDPOINT, f"HTTP {response.status_code}", response.status_code)
    # Only the OAuth error code and description: the body of a token response is never echoed.
    error = body.get("error") if isinstance(body, dict) else None
    description = body.get("error_description") if isinstance(body, dict) else None
    description_text = description.lower() if isinstance(description, str) else ""
    if error == "invalid_grant" or (error == "invalid_request" and "token" in description_text):
        return f"{error}"
    if error in ("invalid_client", "unauthorized_client") or response.status_code == 401:
        raise NonRetryableTaskError(
            "X rejected the client credentials (X_CLIENT_ID, and X_CLIENT_SECRET for a confidential"
            f" client): {error or response.status_code}"
        )
    raise NonRetryableTaskError(f"X token refresh failed: HTTP {response.status_code} {error or ''}".strip())
