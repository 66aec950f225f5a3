"""Outbound URL policy: where the API lets an operator point the worker's HTTP requests.

URLs given through the API (webhook task URLs, Discord webhook URLs, LLM base URLs) must be http(s)
and must not reach the machine's own network: every address the host resolves to is checked, and a
private, loopback, link-local (169.254.169.254 is the cloud metadata service), unique-local, unspecified,
multicast or otherwise non-global one refuses the URL. Requests are checked again just before they are
sent (the webhook handler, the Discord sender): a name may resolve elsewhere by then (DNS rebinding).

`XBOT_ALLOW_PRIVATE_URLS=true` (the default in development and test) turns the address checks off; the
scheme check stays.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses it resolves to, as text.
Resolver = Callable[[str, int], Awaitable[Iterable[str]]]

DEFAULT_RESOLVE_TIMEOUT_SECONDS = 3.0
ALLOWED_SCHEMES = ("http", "https")

_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_METADATA = ipaddress.ip_address("169.254.169.254")


class UrlPolicyError(ValueError):
    """The URL is refused. The message names the host at most, never the path or query (secrets)."""

    retryable = False


class UrlResolutionError(UrlPolicyError):
    """The host did not resolve (in time): perhaps a passing DNS failure, so a request may retry."""

    retryable = True


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, NAT64, 6to4): it is where packets end up."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def refusal_reason(address: IPAddress) -> str | None:
    """Why the policy refuses this address ("loopback", "private", ...), or None for a public one."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return refusal_reason(embedded)
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address == _METADATA:
        return "link-local (cloud metadata service)"
    if address.is_link_local:
        return "link-local"
    if isinstance(address, ipaddress.IPv6Address) and address in _UNIQUE_LOCAL:
        return "unique-local"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "site-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "non-global"
    return None


def _article(reason: str) -> str:
    return "an" if reason == "unspecified" else "a"  # the only reason read with a vowel sound


def parse_address(text: str) -> IPAddress | None:
    """An IP literal (IPv6 zone ids allowed), or None when `text` is a host name."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def split_url(url: str) -> tuple[str, str, int]:
    """(scheme, host as sent on the wire, port), refusing anything but a plain http(s) URL."""
    try:
        parsed = httpx.URL(url)
        # Two parsers must agree on the host: a URL read differently by a checker and a sender is
        # the classic way around such a policy.
        other = urlsplit(url).hostname
        port = parsed.port
    except (httpx.InvalidURL, ValueError):
        raise UrlPolicyError("is not a valid URL") from None
    scheme = parsed.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise UrlPolicyError("must be an http:// or https:// URL")
    host = parsed.raw_host.decode("ascii", errors="replace").lower()
    if not host:
        raise UrlPolicyError("has no host")
    if other is None or other.lower() != parsed.host.lower():
        raise UrlPolicyError("has an ambiguous host")
    return scheme, host, port or (443 if scheme == "https" else 80)


async def check_url(
    url: str,
    *,
    allow_private: bool,
    resolver: Resolver | None = None,
    timeout_seconds: float = DEFAULT_RESOLVE_TIMEOUT_SECONDS,
) -> None:
    """Raise `UrlPolicyError` unless the worker may send a request to `url`."""
    _scheme, host, port = split_url(url)
    if allow_private:
        return
    literal = parse_address(host.strip("[]"))
    if literal is not None:
        reason = refusal_reason(literal)
        if reason is not None:
            raise UrlPolicyError(f"host {host} is {_article(reason)} {reason} address")
        return
    resolve = resolver or system_resolver
    try:
        answers = list(await asyncio.wait_for(resolve(host, port), timeout_seconds))
    except (OSError, UnicodeError, TimeoutError):
        raise UrlResolutionError(f"host {host} cannot be resolved") from None
    addresses = [address for address in map(parse_address, answers) if address is not None]
    if not addresses:
        raise UrlResolutionError(f"host {host} cannot be resolved")
    for address in addresses:  # every one: the client may connect to any of them
        reason = refusal_reason(address)
        if reason is not None:
            raise UrlPolicyError(f"host {host} resolves to {address}, {_article(reason)} {reason} address")
