"""The migration runner: applies once, refuses edited files, serializes concurrent starts."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import asyncpg
import pytest

from xbot.storage.migrate import MIGRATIONS_DIR, MigrationError, migrate


async def test_applies_every_file_once(empty_database_url: str) -> None:
    first = await migrate(empty_database_url)
    assert first == [path.stem for path in sorted(MIGRATIONS_DIR.glob("*.sql"))]
    assert await migrate(empty_database_url) == []
    connection = await asyncpg.connect(empty_database_url)
    try:
        lead = await connection.fetchval(
            "SELECT value FROM app_settings WHERE key = 'scheduler-new-task-lead-seconds'"
        )
        assert lead == "60"
        tables = {
            row["tablename"]
            for row in await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
    finally:
        await connection.close()
    assert {
        "bots",
        "bot_tokens",
        "bot_task_definitions",
        "bot_task_executions",
        "logs",
        "rate_limit_tracking",
        "pulled_posts",
        "x_users",
        "post_replies",
        "app_settings",
        "notification_outbox",
        "schema_migrations",
    } <= tables


async def test_refuses_an_applied_file_that_changed(empty_database_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    await migrate(empty_database_url, directory)
    first = sorted(directory.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited after the fact\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(empty_database_url, directory)


async def test_failed_file_leaves_nothing_half_applied(empty_database_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    (directory / "9999_broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT * FROM no_such_table;\n"
    )
    with pytest.raises(asyncpg.UndefinedTableError):
        await migrate(empty_database_url, directory)
    connection = await asyncpg.connect(empty_database_url)
    try:
        assert await connection.fetchval("SELECT to_regclass('half_done')") is None
        versions = await connection.fetch("SELECT version FROM schema_migrations")
        assert "9999_broken" not in {row["version"] for row in versions}
    finally:
        await connection.close()


async def test_concurrent_starts_apply_each_file_once(empty_database_url: str) -> None:
    results = await asyncio.gather(*(migrate(empty_database_url) for _ in range(5)))
    applied = [version for result in results for version in result]
    assert sorted(applied) == sorted(path.stem for path in MIGRATIONS_DIR.glob("*.sql"))


async def test_unknown_applied_version_is_refused(empty_database_url: str) -> None:
    await migrate(empty_database_url)
    connection = await asyncpg.connect(empty_database_url)
    try:
        await connection.execute(
            "INSERT INTO schema_migrations (version, checksum) VALUES ('9998_from_the_future', 'x')"
        )
    finally:
        await connection.close()
    with pytest.raises(MigrationError, match="does not know"):
        await migrate(empty_database_url)
