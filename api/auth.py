"""Bearer-token authentication for every route but /healthz, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from api.errors import ApiError

# auto_error=False: we answer with our own `{"error": ...}` body instead of FastAPI's.
bearer_scheme = HTTPBearer(auto_error=False, description="The API_TOKEN setting")


class Unauthorized(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(401, message, headers={"WWW-Authenticate": "Bearer"})


def token_matches(expected: str, presented: str | None) -> bool:
    if not presented:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


def bearer_from_header(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def expected_token(connection: HTTPConnection) -> str:
    token: str = connection.app.state.api.api_token
    return token


async def require_token(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme)
) -> None:
    presented = credentials.credentials if credentials else None
    if presented is None:
        raise Unauthorized("missing bearer token")
    if not token_matches(expected_token(request), presented):
        raise Unauthorized("invalid bearer token")


def websocket_token(connection: HTTPConnection) -> str | None:
    """The token of a WebSocket handshake: the Authorization header, else the `token` query parameter."""
    return bearer_from_header(connection.headers.get("authorization")) or connection.query_params.get("token")
