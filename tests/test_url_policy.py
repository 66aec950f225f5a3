"""The outbound URL policy (xbot/url_policy.py) and the masked forms of secrets (xbot/masking.py).

The address classification is checked against the `ipaddress` module's over the whole address space
(Hypothesis), the URL check over IP literals and resolver answers, and a few named cases.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import string
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xbot import url_policy
from xbot.masking import MASK, mask_config, mask_headers, mask_url_secrets, mask_webhook_url, restore_masked
from xbot.settings import load_settings
from xbot.url_policy import UrlPolicyError, UrlResolutionError, check_url, refusal_reason

IP = ipaddress.IPv4Address | ipaddress.IPv6Address

REFUSED_NETWORKS = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
]


def _flagged(address: IP) -> bool:
    """What the `ipaddress` module says makes an address unfit to call out to."""
    special = (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
        or not address.is_global
    )
    if isinstance(address, ipaddress.IPv6Address):
        special = special or address.is_site_local or address in ipaddress.ip_network("fc00::/7")
    return special


def _in_url(address: IP) -> str:
    return f"[{address}]" if address.version == 6 else str(address)


def run(coroutine: object) -> None:
    asyncio.run(coroutine)  # type: ignore[arg-type]


@given(st.ip_addresses(v=4))
def test_ipv4_refused_exactly_when_ipaddress_flags_it(address: ipaddress.IPv4Address) -> None:
    assert (refusal_reason(address) is not None) == _flagged(address)


@given(st.ip_addresses(v=6))
def test_ipv6_without_embedded_ipv4_refused_exactly_when_ipaddress_flags_it(
    address: ipaddress.IPv6Address,
) -> None:
    if address.ipv4_mapped or address.sixtofour or address in ipaddress.ip_network("64:ff9b::/96"):
        return  # judged by the IPv4 address inside: see the next test
    assert (refusal_reason(address) is not None) == _flagged(address)


@given(st.ip_addresses(v=4))
def test_ipv6_forms_of_an_ipv4_address_get_its_verdict(address: ipaddress.IPv4Address) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{address}")
    nat64 = ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(address))
    six_to_four = ipaddress.IPv6Address((0x2002 << 112) | (int(address) << 80) | 1)
    for wrapped in (mapped, nat64, six_to_four):
        assert refusal_reason(wrapped) == refusal_reason(address), wrapped


@given(st.sampled_from(REFUSED_NETWORKS).flatmap(lambda net: st.ip_addresses(network=net)))
def test_every_address_of_the_named_networks_is_refused(address: IP) -> None:
    assert refusal_reason(address) is not None


@given(st.ip_addresses())
def test_a_url_with_an_ip_literal_gets_the_address_verdict(address: IP) -> None:
    url = f"https://{_in_url(address)}:8443/api/webhooks/1/token"
    if refusal_reason(address) is None:
        run(check_url(url, allow_private=False))
    else:
        with pytest.raises(UrlPolicyError) as raised:
            run(check_url(url, allow_private=False))
        assert not raised.value.retryable
        assert "token" not in str(raised.value)
    run(check_url(url, allow_private=True))  # the setting turns the address checks off


@given(st.lists(st.ip_addresses(), min_size=1, max_size=6))
def test_every_resolved_address_is_checked(addresses: list[IP]) -> None:
    async def resolver(host: str, port: int) -> Iterable[str]:
        assert (host, port) == ("hooks.example.com", 443)
        return [str(address) for address in addresses]

    bad = [address for address in addresses if refusal_reason(address) is not None]
    check = check_url("https://hooks.example.com/x", allow_private=False, resolver=resolver)
    if bad:
        with pytest.raises(UrlPolicyError, match=f"resolves to {bad[0]}, an? "):
            run(check)
    else:
        run(check)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://169.254.169.254/latest/meta-data/", "is a link-local (cloud metadata service) address"),
        ("http://127.0.0.1:8080/hook", "is a loopback address"),
        ("http://10.1.2.3/hook", "is a private address"),
        ("http://[fd12:3456::1]/hook", "is a unique-local address"),
        ("http://[fe80::1]/hook", "is a link-local address"),
        ("http://0.0.0.0/", "is an unspecified address"),
        ("http://[::]/", "is an unspecified address"),
        ("http://[::ffff:127.0.0.1]/", "is a loopback address"),
        ("http://100.64.0.1/", "is a non-global address"),
        ("http://localhost:9/hook", "resolves to"),
        ("http://2130706433/", "resolves to 127.0.0.1"),  # 127.0.0.1 as one number
        ("http://evil.example\\@127.0.0.1/", "host 127.0.0.1 is a loopback"),
        ("ftp://files.example.com/x", "must be an http:// or https:// URL"),
        ("file:///etc/passwd", "must be an http:// or https:// URL"),
        ("http:///nohost", "has no host"),
    ],
)
def test_named_refusals(url: str, message: str) -> None:
    with pytest.raises(UrlPolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(check_url(url, allow_private=False))


def test_schemes_are_checked_even_when_private_addresses_are_allowed() -> None:
    with pytest.raises(UrlPolicyError, match="http:// or https://"):
        run(check_url("gopher://127.0.0.1/", allow_private=True))
    run(check_url("http://127.0.0.1:9/hook", allow_private=True))


def test_public_addresses_pass() -> None:
    run(check_url("https://162.159.135.232/api/webhooks/1/t", allow_private=False))
    run(check_url("https://[2606:4700::6810:85e5]/x", allow_private=False))


def test_a_host_that_does_not_resolve_is_a_retryable_refusal() -> None:
    async def failing(host: str, port: int) -> Iterable[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def slow(host: str, port: int) -> Iterable[str]:
        await asyncio.sleep(5)
        return ["1.1.1.1"]

    for resolver in (failing, slow):
        with pytest.raises(UrlResolutionError, match=r"host hooks\.example cannot be resolved") as raised:
            run(
                check_url(
                    "https://hooks.example/x", allow_private=False, resolver=resolver, timeout_seconds=0.2
                )
            )
        assert raised.value.retryable


def test_the_setting_defaults_by_environment() -> None:
    assert load_settings(XBOT_ENV="production").allow_private_urls is False
    assert load_settings(XBOT_ENV="development").allow_private_urls is True
    assert load_settings(XBOT_ENV="test").allow_private_urls is True
    assert load_settings(XBOT_ENV="test", XBOT_ALLOW_PRIVATE_URLS="false").allow_private_urls is False
    assert load_settings(XBOT_ENV="production", XBOT_ALLOW_PRIVATE_URLS="true").allow_private_urls is True


# --- masking --------------------------------------------------------------------------------------

TOKENS = st.text(string.ascii_letters + string.digits + "-_", min_size=12, max_size=80)


@given(st.integers(10**16, 10**19), TOKENS)
def test_a_masked_discord_webhook_url_keeps_its_shape_and_never_its_token(
    webhook_id: int, token: str
) -> None:
    masked = mask_webhook_url(f"https://discord.com/api/webhooks/{webhook_id}/{token}")
    assert masked == f"https://discord.com/api/webhooks/{str(webhook_id)[:3]}…/{MASK}"
    assert token not in masked


def test_masked_webhook_urls() -> None:
    assert mask_webhook_url("http://127.0.0.1:9/hook") == "http://127.0.0.1:9/****"
    assert mask_webhook_url("https://user:pw@hooks.example/a/b?sig=1") == "https://hooks.example/a/****?****"
    assert mask_webhook_url("https://hooks.example") == "https://hooks.example/****"


def test_secret_looking_headers_and_query_parameters_are_masked() -> None:
    headers = {"Authorization": "Bearer x", "X-Api-Key": "k", "X-Signature": "s", "X-Trace": "t"}
    assert mask_headers(headers) == {
        "Authorization": MASK,
        "X-Api-Key": MASK,
        "X-Signature": MASK,
        "X-Trace": "t",
    }
    assert (
        mask_url_secrets("https://u:pw@h.example/x?token=abc&v=1")
        == "https://u:****@h.example/x?token=****&v=1"
    )
    assert mask_url_secrets("https://h.example/x?v=1") == "https://h.example/x?v=1"


HEADER_NAMES = st.sampled_from(["Authorization", "X-Api-Key", "X-Trace", "Content-Language", "X-Auth-Token"])


@given(
    st.dictionaries(HEADER_NAMES, st.text(min_size=1, max_size=20)),
    st.sampled_from(
        ["https://h.example/hook", "https://h.example/hook?token=abc&v=2", "https://u:p@h.example/"]
    ),
)
def test_a_config_sent_back_masked_keeps_its_secrets(headers: dict[str, str], url: str) -> None:
    config = {"url": url, "headers": headers, "timeout_seconds": 5}
    assert restore_masked(mask_config(config), config) == config


def test_a_new_secret_replaces_the_stored_one() -> None:
    stored = {"url": "https://h.example/x?token=old", "headers": {"Authorization": "old"}}
    sent = {"url": "https://h.example/x?token=new", "headers": {"Authorization": "new"}}
    assert restore_masked(sent, stored) == sent


def test_the_policy_module_names_its_setting() -> None:
    assert "XBOT_ALLOW_PRIVATE_URLS" in (url_policy.__doc__ or "")
