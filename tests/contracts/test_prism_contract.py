"""Contract test: every request the X client and the Discord notifier send is valid per the official
OpenAPI specifications, as judged by Stoplight Prism (an independent mock that validates requests).

Prism runs with `--errors`, so a request violation is an error answer, and every answer carries the
violations in its `sl-violations` header. Prism's own generated responses often break the schemas'
formats too (those are reported as `response` violations and turned into 500s): they say nothing
about our requests, so only violations located in the `request` fail the test.

Prism comes from npm (`npm install --prefix .ci/node @stoplight/prism-cli@5.16.0`, done by `.ci/run`);
the test is skipped, saying so, only when the binary is absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest

from xbot import discord
from xbot.crypto.at_rest import cipher_from_settings
from xbot.settings import load_settings
from xbot.x.client import XClient
from xbot.x.connect import finish_connect, start_connect
from xbot.x.errors import XApiError
from xbot.x.token_store import TokenStore
from xbot.x.tokens import store_tokens

HERE = Path(__file__).parent
REPO = HERE.parents[1]
X_SPEC = HERE / "x-api-v2-openapi.json"
DISCORD_SPEC = HERE / "discord-api-openapi.json"
TOKEN_SPEC = HERE / "x-oauth2-token-openapi.json"
POST_ID = "1346889436626259968"
USER_ID = "2244994945"


def prism_binary() -> str | None:
    local = REPO / ".ci" / "node" / "node_modules" / ".bin" / "prism"
    return str(local) if local.exists() else shutil.which("prism")


pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(
        prism_binary() is None,
        reason="Stoplight Prism not installed: run `npm install --prefix .ci/node @stoplight/prism-cli@5.16.0`",
    ),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Prism:
    base_url: str
    process: subprocess.Popen[bytes]


@dataclass
class Violations:
    """Every `sl-violations` entry Prism reported, with the request that caused it."""

    seen: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    statuses: list[tuple[str, int]] = field(default_factory=list)
    queries: list[tuple[str, dict[str, list[str]]]] = field(default_factory=list)

    async def hook(self, response: httpx.Response) -> None:
        where = f"{response.request.method} {response.request.url.path}"
        self.statuses.append((where, response.status_code))
        self.queries.append((where, parse_qs(response.request.url.query.decode())))
        for violation in json.loads(response.headers.get("sl-violations", "[]")):
            self.seen.append((where, violation))

    def in_requests(self) -> list[tuple[str, dict[str, Any]]]:
        return [(where, v) for where, v in self.seen if v.get("location", [""])[0] == "request"]


def start_prism(spec: Path) -> Generator[Prism, None, None]:
    binary = prism_binary()
    assert binary is not None
    port = free_port()
    process = subprocess.Popen(
        [binary, "mock", "--errors", "-h", "127.0.0.1", "-p", str(port), str(spec)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield Prism(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


async def wait_until_listening(prism: Prism) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(240):  # Prism parses a large spec first: allow up to a minute
            if prism.process.poll() is not None:
                raise RuntimeError(f"prism exited with {prism.process.returncode}")
            try:
                await http.get(prism.base_url + "/", timeout=1)
                return
            except httpx.TransportError:
                await asyncio.sleep(0.25)
    raise RuntimeError("prism did not start listening within a minute")


@pytest.fixture(scope="module")
def prism_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prism, Prism]]:
    # X's API v2 document has no token endpoint: its documented form is added from our own file.
    spec = json.loads(X_SPEC.read_text())
    token = json.loads(TOKEN_SPEC.read_text())
    spec["paths"].update(token["paths"])
    spec["components"]["securitySchemes"].update(token["components"]["securitySchemes"])
    x_spec = tmp_path_factory.mktemp("prism") / "x-api-v2-with-token.json"
    x_spec.write_text(json.dumps(spec))
    x_gen, discord_gen = start_prism(x_spec), start_prism(DISCORD_SPEC)
    x_prism, discord_prism = next(x_gen), next(discord_gen)
    try:
        yield x_prism, discord_prism
    finally:
        for gen in (x_gen, discord_gen):
            gen.close()


@pytest.fixture
async def prisms(prism_servers: tuple[Prism, Prism]) -> AsyncIterator[tuple[Prism, Prism]]:
    await asyncio.gather(*(wait_until_listening(p) for p in prism_servers))
    yield prism_servers


async def x_client(pool: asyncpg.Pool, base_url: str, http: httpx.AsyncClient) -> XClient:
    settings = load_settings(XBOT_ENV="test", X_API_BASE_URL=base_url, X_REQUEST_TIMEOUT_SECONDS=10)
    cipher = cipher_from_settings(settings)
    await pool.execute("INSERT INTO bots (id, name, plan_tier) VALUES ('contract', 'Contract', 'pro')")
    await store_tokens(
        pool, cipher, "contract", "any-bearer", "any-refresh", datetime.now(UTC) + timedelta(hours=1)
    )
    tokens = TokenStore(pool, cipher, http, settings)
    return XClient(http=http, pool=pool, settings=settings, tokens=tokens, bot_id="contract", plan_tier="pro")


async def test_x_client_requests_match_the_x_api_specification(
    prisms: tuple[Prism, Prism], pool: asyncpg.Pool
) -> None:
    violations = Violations()
    async with httpx.AsyncClient(event_hooks={"response": [violations.hook]}) as http:
        x = await x_client(pool, prisms[0].base_url, http)
        calls = [
            x.get_me(),
            x.mentions(USER_ID),
            x.mentions(
                USER_ID,
                since_id=POST_ID,
                until_id="1946889436626259968",
                pagination_token="7140dibdnow9c7btw4",
            ),
            x.user_posts(USER_ID, start_time=datetime.now(UTC) - timedelta(hours=1), max_results=100),
            x.get_post(POST_ID),
            x.get_posts([POST_ID, "1946889436626259968"]),
            x.users_by_ids([USER_ID, "783214"]),
            x.create_post("Thanks for the mention!", POST_ID),
        ]
        for call in calls:
            # Prism's example answers may themselves break the spec; only our requests are judged.
            with contextlib.suppress(XApiError):
                await call

        assert len(violations.statuses) == len(calls)
        assert violations.in_requests() == []
        rejected = [(where, status) for where, status in violations.statuses if 400 <= status < 500]
        assert rejected == []
        # Mentions come with their media (for vision and alt texts), and the spec accepts the names.
        mentions = [query for where, query in violations.queries if where.endswith("/mentions")]
        assert mentions and all("attachments.media_keys" in q["expansions"][0].split(",") for q in mentions)
        assert all(q["media.fields"] == ["type,url,preview_image_url,alt_text"] for q in mentions)

        # The check can fail: a request the spec forbids is reported.
        await http.get(
            f"{prisms[0].base_url}/2/users/{USER_ID}/mentions",
            params={"max_results": 3},
            headers={"Authorization": "Bearer any"},
        )
        assert [v["location"] for _, v in violations.in_requests()] == [["request", "query", "max_results"]]


@pytest.mark.parametrize("client", ["confidential", "public"])
async def test_connect_requests_match_the_token_endpoint_and_users_me(
    prisms: tuple[Prism, Prism], pool: asyncpg.Pool, client: str
) -> None:
    """The callback's code exchange (`POST /2/oauth2/token`, authorization_code with PKCE) and its
    `GET /2/users/me`, for a confidential client (Basic auth) and a public one (client_id in the form)."""
    secret = {"X_CLIENT_SECRET": "contract-secret"} if client == "confidential" else {}
    settings = load_settings(
        XBOT_ENV="test",
        X_API_BASE_URL=prisms[0].base_url,
        X_CLIENT_ID="contract-client",
        X_REDIRECT_URI="https://xbot.example/oauth/x/callback",
        X_REQUEST_TIMEOUT_SECONDS=10,
        **secret,
    )
    cipher = cipher_from_settings(settings)
    await pool.execute("INSERT INTO bots (id, name, plan_tier) VALUES ('contract', 'Contract', 'pro')")
    started = await start_connect(pool, cipher, settings, "contract")
    state = parse_qs(urlsplit(started.authorize_url).query)["state"][0]
    violations = Violations()
    sent: list[httpx.Request] = []

    async def keep(request: httpx.Request) -> None:
        sent.append(request)

    async with httpx.AsyncClient(event_hooks={"request": [keep], "response": [violations.hook]}) as http:
        result = await finish_connect(
            pool, cipher, http, settings, state=state, code="VGNibzFWSWREZm01bjN1N0dicWJ", error=None
        )
        assert violations.in_requests() == []
        assert [where for where, _ in violations.statuses] == ["POST /2/oauth2/token", "GET /2/users/me"]
        assert violations.statuses[0][1] == 200
        form = parse_qs(sent[0].content.decode())
        assert form["grant_type"] == ["authorization_code"] and "code_verifier" in form
        assert ("client_id" in form) == (client == "public")
        assert ("authorization" in sent[0].headers) == (client == "confidential")
        assert sent[1].headers["authorization"] == "Bearer example-access-token"
        assert result.bot_id == "contract"

        # The check can fail: a code exchange without its verifier is reported.
        await http.post(
            f"{prisms[0].base_url}/2/oauth2/token",
            data={"grant_type": "authorization_code", "code": "c", "redirect_uri": "https://xbot.example/cb"},
        )
        refused = violations.in_requests()
        assert refused and all(v["location"][:2] == ["request", "body"] for _, v in refused)
        assert any("code_verifier" in v.get("message", "") for _, v in refused)


async def test_discord_webhook_request_matches_the_discord_specification(prisms: tuple[Prism, Prism]) -> None:
    violations = Violations()
    # `Prefer: code=204` makes Prism answer with a webhook's real 204 (no `?wait=true`).
    async with httpx.AsyncClient(
        headers={"Prefer": "code=204"}, event_hooks={"response": [violations.hook]}
    ) as http:
        notice = discord.ReplyNotice(
            "Helper", "alice", POST_ID, "Thanks for the mention!", "1946889436626259968"
        )
        outcome = await discord.deliver(
            http, f"{prisms[1].base_url}/webhooks/223704706495545344/tok-en_1", discord.message(notice)
        )

    assert violations.in_requests() == []
    assert isinstance(outcome, discord.Delivered)
