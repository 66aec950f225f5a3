"""One TLS context for the session's HTTP clients.

httpx builds an SSL context for every client, parsing the whole CA bundle each time (~20 ms of CPU);
the tests and the product under test make a client per test, per LLM call and per OAuth callback,
which made this a fifth of the fast tier's CPU time. Every test talks plain HTTP to loopback, so the
default context is built once and shared (an SSLContext is only read when a TLS connection opens).
"""

from __future__ import annotations

import functools
import ssl
from typing import Any


def share_default_tls_context() -> None:
    """Only a speed-up: an httpx whose internals moved (a private name) keeps building its own."""
    try:
        import httpx._transports.default as httpx_transport

        build = httpx_transport.create_ssl_context
    except (ImportError, AttributeError):
        return
    if getattr(build, "shared", False):
        return
    default = functools.cache(lambda: build())

    def create_ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> ssl.SSLContext:
        if verify is True and cert is None and trust_env:
            return default()
        return build(verify=verify, cert=cert, trust_env=trust_env)

    create_ssl_context.shared = True  # type: ignore[attr-defined]
    httpx_transport.create_ssl_context = create_ssl_context
