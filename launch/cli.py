"""The `xbot` command: `dev`, `worker`, `api`, `migrate`, `bench`, `generate-key`, `reencrypt-tokens`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from xbot.log_setup import configure_process_logging
from xbot.settings import settings_or_exit


def _cmd_migrate(_: argparse.Namespace) -> int:
    from xbot.storage.migrate import MigrationError, migrate
    from xbot.storage.pool import resolve_database_url, stop_embedded_postgres

    settings = settings_or_exit()
    try:
        applied = asyncio.run(migrate(resolve_database_url(settings)))
    except MigrationError as error:
        print(f"xbot migrate: {error}", file=sys.stderr)
        return 1
    finally:
        stop_embedded_postgres()
    print(f"applied: {', '.join(applied)}" if applied else "database is up to date")
    return 0


def _cmd_worker(_: argparse.Namespace) -> int:
    from launch.worker import run_worker

    asyncio.run(run_worker(settings_or_exit()))
    return 0


def _cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    settings = settings_or_exit()
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        log_level="info",
        access_log=settings.api_access_log,
        ws_ping_interval=20,
    )
    return 0


def _cmd_dev(_: argparse.Namespace) -> int:
    from launch.dev import run_dev_stack

    return run_dev_stack(settings_or_exit())


def _cmd_generate_key(_: argparse.Namespace) -> int:
    from xbot.crypto.at_rest import generate_key

    print(generate_key())
    return 0


def _cmd_reencrypt_tokens(args: argparse.Namespace) -> int:
    from xbot.crypto.at_rest import TokenCipherError, cipher_from_settings
    from xbot.crypto.reencrypt import reencrypt_all
    from xbot.storage.pool import create_pool, resolve_database_url, stop_embedded_postgres

    settings = settings_or_exit()
    try:
        cipher = cipher_from_settings(settings)
    except TokenCipherError as error:
        print(f"xbot reencrypt-tokens: {error}", file=sys.stderr)
        return 2

    async def run() -> dict[str, Any]:
        pool = await create_pool(resolve_database_url(settings), max_size=2)
        try:
            return await reencrypt_all(pool, cipher, batch_size=args.batch_size)
        finally:
            await pool.close()

    try:
        counts = asyncio.run(run())
    finally:
        stop_embedded_postgres()
    for table, table_counts in counts.items():
        print(table_counts.line(table))
    if any(table_counts.unreadable for table_counts in counts.values()):
        print(
            "xbot reencrypt-tokens: some values cannot be decrypted with any key of TOKEN_ENCRYPTION_KEY;"
            " keep the key that wrote them in the list",
            file=sys.stderr,
        )
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xbot", description="X bot scheduler on Temporal")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "dev", help="run the whole stack locally: Temporal dev server, Postgres, migrations, worker, API"
    ).set_defaults(func=_cmd_dev)
    commands.add_parser("worker", help="run a Temporal worker").set_defaults(func=_cmd_worker)
    api = commands.add_parser("api", help="run the HTTP API with uvicorn")
    api.add_argument("--host", default=None)
    api.add_argument("--port", type=int, default=None)
    api.set_defaults(func=_cmd_api)
    commands.add_parser("migrate", help="apply pending database migrations").set_defaults(func=_cmd_migrate)
    # Listed for --help only: main() hands `xbot bench ...` to the harness before parsing.
    commands.add_parser(
        "bench", help="run the benchmarks: xbot bench [scenario] [--quick] (docs/benchmarks.md)"
    )
    commands.add_parser("generate-key", help="print a new TOKEN_ENCRYPTION_KEY").set_defaults(
        func=_cmd_generate_key
    )
    reencrypt = commands.add_parser(
        "reencrypt-tokens",
        help="re-encrypt every stored token with the first key of TOKEN_ENCRYPTION_KEY (after a key rotation)",
    )
    reencrypt.add_argument("--batch-size", type=int, default=100, help="rows read per batch")
    reencrypt.set_defaults(func=_cmd_reencrypt_tokens)
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_process_logging()
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["bench"]:
        # The benchmark harness has its own options (`--quick`, `--profile`...); hand them over as is.
        from bench.__main__ import main as bench_main

        return bench_main(arguments[1:])
    args = build_parser().parse_args(arguments)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
