"""TOKEN_ENCRYPTION_KEY as a key ring (first key encrypts, all decrypt) and `xbot reencrypt-tokens`."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.support.factories import insert_bot
from xbot.crypto.at_rest import TokenCipher, TokenCipherError, generate_key
from xbot.crypto.reencrypt import EncryptedColumns, reencrypt_all
from xbot.settings import SettingsError, load_settings
from xbot.x.token_store import TokenStore

ROOT = Path(__file__).resolve().parent.parent
KEY_A, KEY_B, KEY_C = generate_key(), generate_key(), generate_key()
SECRET_MARK = "secretvalue"


def test_first_key_encrypts_and_every_key_decrypts() -> None:
    under_a = TokenCipher(KEY_A).encrypt("access-1-secretvalue")
    ring = TokenCipher(f"{KEY_B}, {KEY_A}")  # spaces around the comma are fine

    assert ring.decrypt(under_a) == "access-1-secretvalue"
    fresh = ring.encrypt("access-2-secretvalue")
    assert TokenCipher(KEY_B).decrypt(fresh) == "access-2-secretvalue"
    with pytest.raises(TokenCipherError, match="TOKEN_ENCRYPTION_KEY"):
        TokenCipher(KEY_A).decrypt(fresh)
    assert ring.is_current(fresh) and not ring.is_current(under_a)
    assert TokenCipher(KEY_B).decrypt(ring.rotate(under_a)) == "access-1-secretvalue"
    assert KEY_A not in repr(ring) and KEY_B not in repr(ring)


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ("not-a-fernet-key", "the key"),
        (f"{generate_key()},also-bad", "key 2 of 2"),
        (f"{generate_key()},,{generate_key()}", "key 2 of 3 is empty"),
        (",", "no key given"),
    ],
)
def test_a_bad_key_ring_is_a_one_line_settings_error_without_the_key(
    monkeypatch: pytest.MonkeyPatch, value: str, where: str
) -> None:
    monkeypatch.setenv("TOKEN_ENCRYPTION_KEY", value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith("invalid setting TOKEN_ENCRYPTION_KEY:") and where in message
    assert "\n" not in message
    for part in value.split(","):
        assert not part or part not in message
    with pytest.raises(TokenCipherError, match=f"invalid setting TOKEN_ENCRYPTION_KEY: .*{where}"):
        TokenCipher(value)


async def add_bot(pool: asyncpg.Pool, cipher: TokenCipher, bot_id: str) -> None:
    tokens = (f"access-{bot_id}-secretvalue", f"refresh-{bot_id}-secretvalue")
    await insert_bot(pool, bot_id, cipher=cipher, tokens=tokens)


async def readable(pool: asyncpg.Pool, cipher: TokenCipher) -> list[tuple[str, str]]:
    rows = await pool.fetch("SELECT access_token_enc, refresh_token_enc FROM bot_tokens ORDER BY bot_id")
    return [(cipher.decrypt(r["access_token_enc"]), cipher.decrypt(r["refresh_token_enc"])) for r in rows]


async def test_rotation_a_then_b_a_then_reencrypt_then_b_alone(pool: asyncpg.Pool) -> None:
    old = TokenCipher(KEY_A)
    for bot_id in ("bot-1", "bot-2", "bot-3"):
        await add_bot(pool, old, bot_id)
    ring = TokenCipher(f"{KEY_B},{KEY_A}")
    async with httpx.AsyncClient() as http:
        token = await TokenStore(pool, ring, http, load_settings()).access_token("bot-2")
    assert token.value == "access-bot-2-secretvalue"  # written under A, read with "B,A"

    counts = await reencrypt_all(pool, ring, batch_size=2)  # two batches

    assert (counts["bot_tokens"].reencrypted, counts["bot_tokens"].current) == (3, 0)
    assert await readable(pool, TokenCipher(KEY_B)) == [
        (f"access-{b}-secretvalue", f"refresh-{b}-secretvalue") for b in ("bot-1", "bot-2", "bot-3")
    ]
    with pytest.raises(TokenCipherError):
        await readable(pool, old)
    versions = await pool.fetchval("SELECT array_agg(version) FROM bot_tokens")
    assert versions == [1, 1, 1]  # same pair, new ciphertext: nobody's refresh race is disturbed

    again = await reencrypt_all(pool, ring, batch_size=2)
    assert (again["bot_tokens"].reencrypted, again["bot_tokens"].current) == (0, 3)  # idempotent


async def test_unreadable_rows_are_counted_and_the_rest_reencrypted(pool: asyncpg.Pool) -> None:
    await add_bot(pool, TokenCipher(KEY_A), "bot-a")
    await add_bot(pool, TokenCipher(KEY_C), "bot-c")  # a key nobody listed
    counts = (await reencrypt_all(pool, TokenCipher(f"{KEY_B},{KEY_A}")))["bot_tokens"]
    assert (counts.reencrypted, counts.current, counts.unreadable) == (1, 0, 1)
    assert "1 unreadable" in counts.line("bot_tokens")


async def test_another_encrypted_column_is_one_more_entry(pool: asyncpg.Pool) -> None:
    # e.g. a bot's Discord webhook URL stored as a Fernet token in a text column.
    await pool.execute("CREATE TABLE other_secrets (id integer PRIMARY KEY, url_enc text)")
    under_a = TokenCipher(KEY_A).encrypt("https://discord.test/api/webhooks/1/secretvalue").decode()
    await pool.execute("INSERT INTO other_secrets VALUES (1, $1), (2, NULL)", under_a)
    ring = TokenCipher(f"{KEY_B},{KEY_A}")

    counts = await reencrypt_all(pool, ring, targets=(EncryptedColumns("other_secrets", "id", ("url_enc",)),))

    assert (counts["other_secrets"].reencrypted, counts["other_secrets"].current) == (1, 1)
    stored = await pool.fetchval("SELECT url_enc FROM other_secrets WHERE id = 1")
    assert TokenCipher(KEY_B).decrypt(stored.encode()).endswith("/secretvalue")


async def run_cli(*args: str, key: str, database_url: str) -> tuple[int, str, str]:
    env = {**os.environ, "TOKEN_ENCRYPTION_KEY": key, "DATABASE_URL": database_url, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "launch.cli",
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.system  # the `xbot` CLI in a process of its own
async def test_reencrypt_tokens_command(pool: asyncpg.Pool, database_url: str) -> None:
    for bot_id in ("bot-1", "bot-2"):
        await add_bot(pool, TokenCipher(KEY_A), bot_id)

    code, out, err = await run_cli(
        "reencrypt-tokens", "--batch-size", "1", key=f"{KEY_B},{KEY_A}", database_url=database_url
    )
    assert code == 0, err
    assert out.splitlines()[0] == "bot_tokens: 2 re-encrypted, 0 already under the first key, 0 unreadable"
    assert len(await readable(pool, TokenCipher(KEY_B))) == 2

    code, out, err = await run_cli("reencrypt-tokens", key=KEY_B, database_url=database_url)
    assert code == 0 and "0 re-encrypted, 2 already under the first key" in out

    await add_bot(pool, TokenCipher(KEY_C), "bot-3")
    code, out, err = await run_cli("reencrypt-tokens", key=KEY_B, database_url=database_url)
    assert code == 1 and "1 unreadable" in out and "cannot be decrypted" in err

    code, out, err = await run_cli("reencrypt-tokens", key=f"{KEY_B},oops", database_url=database_url)
    assert code == 2 and err.strip().count("\n") == 0 and "TOKEN_ENCRYPTION_KEY" in err
    for text in (out, err):
        assert SECRET_MARK not in text and KEY_A not in text and KEY_B not in text


def test_the_command_is_listed() -> None:
    from launch.cli import build_parser

    assert "reencrypt-tokens" in build_parser().format_help()
