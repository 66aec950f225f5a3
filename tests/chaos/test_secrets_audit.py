"""Secrets audit: one end-to-end run with real-looking secrets, then every place they could leak
to is searched for them.

The run goes through the front door: `xbot api` and `python worker.py` processes, bots created
with their OAuth tokens and a Discord webhook through the API, tasks added and schedulers started
through the API, the live feed opened with the token. On the way: token refreshes (rotation), a
revoked bot (invalid_grant), an X 503, a post X accepted but answered 500 (recovery search).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
import websockets
from cryptography.fernet import Fernet

from tests.chaos.conftest import new_database, running_server, serve_fakes
from tests.chaos.helpers import WORKER_READY, api_proc, eventually, service_env, wait_for_log, worker_proc
from tests.chaos.infra import RestartableTemporal, StoppablePostgres, free_port, processes
from tests.support.database import drop_database
from xbot.storage.pool import create_pool

pytestmark = [pytest.mark.chaos, pytest.mark.system]

SOURCES = (
    "workflow histories",
    "logs rows",
    "execution rows",
    "reply rows",
    "bot and outbox rows",
    "worker output",
    "api output",
)


@dataclass
class Audit:
    secrets: dict[str, str] = field(default_factory=dict)  # what -> value
    sources: dict[str, str] = field(default_factory=dict)  # where -> everything it holds, as text
    workflows: int = 0

    def leaks(self, source: str) -> dict[str, list[str]]:
        """{secret name: [excerpts]} of every secret found in `source` (raw or URL-encoded)."""
        text = self.sources[source]
        found: dict[str, list[str]] = {}
        for name, value in self.secrets.items():
            for form in {value, quote(value, safe="")}:
                at = text.find(form)
                if at >= 0:
                    found.setdefault(name, []).append(text[max(0, at - 120) : at + len(form) + 20])
        return found


def decoded_payloads(node: Any, out: list[str]) -> None:
    """Every payload's `data` in a history's JSON, base64-decoded (the JSON shows it encoded)."""
    if isinstance(node, dict):
        data = node.get("data")
        if isinstance(data, str) and "metadata" in node:
            try:
                out.append(base64.b64decode(data).decode("utf-8", errors="replace"))
            except ValueError:
                out.append(data)
        for value in node.values():
            decoded_payloads(value, out)
    elif isinstance(node, list):
        for item in node:
            decoded_payloads(item, out)


def export_histories(temporal: RestartableTemporal, task_queue: str) -> tuple[int, str]:
    """Every run on the queue, listed and exported with the real `temporal` CLI, as one text."""
    listed = json.loads(
        temporal.cli("workflow", "list", "--query", f'TaskQueue="{task_queue}"', "-o", "json") or "[]"
    )
    if isinstance(listed, dict):  # one execution printed as an object
        listed = [listed]
    texts = []
    for execution in listed:
        run = execution.get("execution") or execution
        raw = temporal.cli(
            "workflow", "show", "--workflow-id", run["workflowId"], "--run-id", run["runId"], "-o", "json"
        )
        payloads: list[str] = []
        decoded_payloads(json.loads(raw), payloads)
        texts += [raw, *payloads]
    return len(listed), "\n".join(texts)


async def _run(
    audit: Audit, postgres: StoppablePostgres, temporal: RestartableTemporal, log_dir: Path
) -> None:
    api_token = "xbt_live_" + secrets.token_hex(24)
    token_key = Fernet.generate_key().decode()
    queue = f"audit-{secrets.token_hex(4)}"
    database_url = await new_database(postgres)
    # New tasks are first due this long after they are created (the seed's lead; 60 s by default).
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            "UPDATE app_settings SET value = '1'::jsonb WHERE key = 'scheduler-new-task-lead-seconds'"
        )
    finally:
        await connection.close()
    try:
        async with serve_fakes() as fakes:
            webhook_token = secrets.token_urlsafe(51)
            audit.secrets.update(
                api_token=api_token,
                token_encryption_key=token_key,
                x_client_secret=fakes.client_secret,
                openai_api_key=fakes.llm.api_key,
                discord_webhook_token=webhook_token,
            )
            env = service_env(fakes, database_url, temporal.address, queue, token_key, API_TOKEN=api_token)
            port = free_port()
            with processes() as procs:
                worker, api_server = worker_proc("worker", env, log_dir), api_proc(env, port, log_dir)
                procs += [worker, api_server]
                worker.start()
                api_server.start()
                try:
                    await wait_for_log(worker, WORKER_READY)
                    began = time.monotonic()
                    await _drive(audit, fakes, port, api_token, webhook_token, database_url)
                except AssertionError:
                    print(worker.tail(), api_server.tail())
                    raise
            print(f"audit run took {time.monotonic() - began:.1f} s")
            audit.sources["worker output"] = worker.output()
            audit.sources["api output"] = api_server.output()
            for fake in fakes.x.accounts.values():
                for n, token in enumerate(fake.issued):
                    audit.secrets[
                        f"{fake.tag} {'access' if n % 2 == 0 else 'refresh'} token #{n // 2 + 1}"
                    ] = token
        began = time.monotonic()
        audit.workflows, audit.sources["workflow histories"] = export_histories(temporal, queue)
        print(f"{audit.workflows} histories exported in {time.monotonic() - began:.1f} s")
        pool = await create_pool(database_url, min_size=1, max_size=2)
        try:
            rows = await pool.fetch("SELECT level, content, context::text AS context FROM logs")
            audit.sources["logs rows"] = "\n".join(f"{r['content']} {r['context']}" for r in rows)
            rows = await pool.fetch(
                "SELECT error_message, error_stack, result_data::text AS result FROM bot_task_executions"
            )
            audit.sources["execution rows"] = "\n".join(
                f"{r['error_message']} {r['error_stack']} {r['result']}" for r in rows
            )
            rows = await pool.fetch("SELECT error_message FROM post_replies")
            audit.sources["reply rows"] = "\n".join(str(r["error_message"]) for r in rows)
            # Whole rows, the encrypted webhook URL included (as its bytes, decoded as far as they go).
            rows = await pool.fetch("SELECT * FROM bots")
            rows += await pool.fetch("SELECT * FROM notification_outbox")
            audit.sources["bot and outbox rows"] = "\n".join(
                " ".join(
                    value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
                    for value in row.values()
                )
                for row in rows
            )
        finally:
            await pool.close()
    finally:
        await drop_database(await running_server(postgres), database_url)


async def _drive(
    audit: Audit, fakes: Any, port: int, api_token: str, webhook_token: str, database_url: str
) -> None:
    """Bots, tasks and schedulers through the API; wait until the mentions are answered."""
    auth = {"Authorization": f"Bearer {api_token}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=15) as api:

        async def health() -> int:
            try:
                return (await api.get("/healthz")).status_code
            except httpx.TransportError:
                return 0

        await eventually(health, lambda code: code == 200, 60, "API up")
        accounts = {name: fakes.x.account(name) for name in ("alpha", "beta", "gamma")}
        mentions = []
        for number, account in enumerate(accounts.values()):
            for fan in range(2):
                account.add_user(f"9{number}{fan}", f"fan{number}{fan}")
                mentions.append(
                    (account, account.mention(f"9{number}{fan}", f"@{account.bot_username} hi {fan}"))
                )
        accounts["alpha"].inject("mentions", "503")
        accounts["alpha"].inject("create_post", "accept_then_500")
        for name, account in accounts.items():
            access, refresh = account.issue_tokens()
            body = {
                "id": f"audit-{name}",
                "name": f"Audit {name}",
                "x_user_id": account.bot_user_id,
                "x_username": account.bot_username,
                "plan_tier": "pro",
                "discord_webhook_url": f"{fakes.discord_url}/api/webhooks/1234567890/{webhook_token}",
                # Expires within the refresh margin: the first call refreshes (and X rotates).
                "tokens": {
                    "access_token": access,
                    "refresh_token": refresh,
                    "expires_at": (datetime.now(UTC) + timedelta(seconds=20)).isoformat(),
                },
            }
            assert (await api.post("/bots", json=body)).status_code == 201
            for priority, task_type in enumerate(
                ("user_fetch", "reply_to_mentions", "generate_replies", "pull_mentions")
            ):
                task = {
                    "task_type": task_type,
                    "interval_seconds": 2,
                    "priority": priority,
                    "retry_delay_minutes": 0.01,
                }
                created = await api.post(f"/bots/audit-{name}/tasks", json=task)
                assert created.status_code == 201, created.text
        fakes.x.revoke("gamma")  # gamma's refresh will be refused: invalid_grant
        for name in accounts:
            started = await api.post(f"/bots/audit-{name}/start")
            assert started.status_code == 200, started.text

        ws_base = f"ws://127.0.0.1:{port}/bots/audit-alpha/ws"
        async with (
            # max_queue=None: events we do not read must not stall the closing handshake.
            websockets.connect(f"{ws_base}?token={api_token}", open_timeout=10, max_queue=None) as by_query,
            websockets.connect(
                ws_base, additional_headers=auth, open_timeout=10, max_queue=None
            ) as by_header,
        ):
            await asyncio.wait_for(by_query.recv(), 10)
            await asyncio.wait_for(by_header.recv(), 10)

            async def pending() -> list[str]:
                return [m for a, m in mentions if a.tag != "gamma" and a.posts_per_mention[m] < 1]

            await eventually(pending, lambda left: not left, 90, "mentions answered")

            async def gamma_state() -> str:
                return str((await api.get("/bots/audit-gamma")).json()["auth_state"])

            await eventually(gamma_state, lambda s: s == "needs_reauthorization", 30, "gamma parked")
            for path in ("/bots", "/bots/audit-alpha/executions", "/bots/audit-alpha/logs", "/bots/audit-gamma/logs",
                         "/bots/audit-alpha/replies", "/bots/audit-alpha/status", "/metrics"):  # fmt: skip
                assert (await api.get(path)).status_code == 200, path
        for name in accounts:
            await api.post(f"/bots/audit-{name}/stop")
        assert fakes.discord.messages, "the webhook (and its token) was used"
        assert fakes.x.token_calls.count(("gamma", 400)) == 1


@pytest.fixture(scope="module")
async def audit(
    chaos_postgres: StoppablePostgres,
    chaos_temporal: RestartableTemporal,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Audit]:
    result = Audit()
    await _run(result, chaos_postgres, chaos_temporal, tmp_path_factory.mktemp("audit"))
    yield result


def test_the_audit_searched_real_material(audit: Audit) -> None:
    """The audit is not vacuous: every source holds material, and the secrets were used (X issued
    rotated tokens, so the refresh path ran)."""
    assert audit.workflows >= 3
    for source in SOURCES:
        assert audit.sources[source].strip() or source == "reply rows", source
    assert sum("refresh token #2" in name for name in audit.secrets) >= 2  # rotation happened
    # Payloads were decoded: their JSON (only base64 in the CLI's output) was searched too.
    assert '"bot_id":"audit-alpha"' in audit.sources["workflow histories"].replace(" ", "")
    assert (
        "pull_mentions" in audit.sources["execution rows"]
        or "mentions_pulled" in audit.sources["execution rows"]
    )


def test_no_secret_in_workflow_histories(audit: Audit) -> None:
    """Promise: every workflow history (exported with `temporal workflow show -o json`, payloads
    decoded) holds no token, key or secret: workflows pass ids, activities load the rest."""
    assert audit.leaks("workflow histories") == {}


def test_no_secret_in_log_execution_or_reply_rows(audit: Audit) -> None:
    """Promise: `logs` rows and execution and reply records (errors, stacks, results) never
    carry a token, key or secret, also on the error paths (refused refresh, X faults)."""
    for source in ("logs rows", "execution rows", "reply rows"):
        assert audit.leaks(source) == {}, source


def test_no_secret_in_bot_or_outbox_rows(audit: Audit) -> None:
    """Promise: the Discord webhook URL is stored encrypted (its token is not in any bot column, nor in
    the notifications outbox, which reads the URL from the bot when it sends)."""
    assert audit.leaks("bot and outbox rows") == {}
    assert "/api/webhooks/123…/****" in audit.sources["bot and outbox rows"]  # the masked form


def test_no_secret_in_api_output(audit: Audit) -> None:
    """Promise: what the API process prints (uvicorn's access log included, where the WebSocket
    handshake carried the token in its query string) never carries a secret."""
    assert audit.leaks("api output") == {}


def test_no_secret_in_worker_output(audit: Audit) -> None:
    """Promise: what the worker process prints (its logs) never carries a secret."""
    assert audit.leaks("worker output") == {}
