"""Results: the table printed after each scenario, `bench/results/<scenario>.json`, docs/benchmarks.md.

A result is a plain dict (JSON as written):
  scenario, quick, started_at, duration_seconds, machine, noise, config, systems, ratios, goals,
  notes, table {columns, rows}.
`docs/benchmarks.md` is regenerated from every full (not quick) result in the results directory,
followed by the hand-written analysis in `bench/analysis.md`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench.env import DEV_SERVER_STORE, temporal_cli_version

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_DOCS_PATH = BENCH_DIR.parent / "docs" / "benchmarks.md"
ANALYSIS_PATH = BENCH_DIR / "analysis.md"
SCENARIO_ORDER = ("precision", "throughput", "idle", "history", "api_feed", "crash_recovery")

Result = dict[str, Any]


def machine_info(postgres_version: str) -> dict[str, Any]:
    import temporalio

    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_model": cpu_model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "temporalio": temporalio.__version__,
        "temporal_cli": temporal_cli_version(),
        "temporal_store": DEV_SERVER_STORE,
        "postgresql": postgres_version,
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
    }


@dataclass
class NoiseMeter:
    """CPU used on the machine by everything that is not this benchmark, during a scenario.

    Other sessions run tests on the same cores; this says how much they took. Machine-wide busy time
    minus our own: this process, its children (live, and reaped ones through `children_*`) and the
    PostgreSQL processes found by `own_markers` in their command lines.
    """

    own_markers: tuple[str, ...] = ()
    _start_wall: float = 0.0
    _start_other: float = 0.0

    def _own_cpu(self) -> float:
        me = psutil.Process()
        times = me.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        tree = {me.pid}
        for child in me.children(recursive=True):
            tree.add(child.pid)
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
        for process in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
            info = process.info
            if info["pid"] in tree or info["cpu_times"] is None:
                continue
            cmdline = " ".join(info["cmdline"] or [])
            if any(marker in cmdline for marker in self.own_markers):
                total += info["cpu_times"].user + info["cpu_times"].system
        return total

    @staticmethod
    def _machine_busy() -> float:
        times = psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    def _other_cpu(self) -> float:
        return self._machine_busy() - self._own_cpu()

    def start(self) -> None:
        self._start_wall = time.monotonic()
        self._start_other = self._other_cpu()

    def stop(self) -> dict[str, float]:
        wall = max(1e-6, time.monotonic() - self._start_wall)
        other = max(0.0, self._other_cpu() - self._start_other)
        cores = os.cpu_count() or 1
        return {
            "other_processes_cpu_seconds": round(other, 1),
            "other_processes_share_of_machine": round(other / (wall * cores), 3),
        }


def new_result(scenario: str, quick: bool, machine: dict[str, Any]) -> Result:
    return {
        "scenario": scenario,
        "quick": quick,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_seconds": 0.0,
        "machine": machine,
        "noise": {},
        "config": {},
        "systems": {},
        "ratios": {},
        "goals": [],
        "notes": [],
        "table": {"columns": [], "rows": []},
    }


def goal(name: str, target: str, value: Any, met: bool | None) -> dict[str, Any]:
    return {"goal": name, "target": target, "value": value, "met": met}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "∞"
        if abs(value) >= 100:
            return f"{value:,.1f}"
        return f"{value:.2g}" if 0 < abs(value) < 0.1 else f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, list):
        return " and ".join(_cell(item) for item in value)
    return str(value)


def format_table(columns: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(column) for column in columns]] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[index]) for row in cells) for index in range(len(columns))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _goal_mark(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[met]


def print_result(result: Result) -> None:
    title = f"== {result['scenario']}{' (quick)' if result['quick'] else ''}"
    print(f"\n{title}  [{result['duration_seconds']:.0f}s]")
    table = result["table"]
    if table["columns"]:
        print(format_table(table["columns"], table["rows"]))
    for item in result["goals"]:
        print(
            f"goal: {item['goal']} — target {item['target']}, got {_cell(item['value'])}: "
            f"{_goal_mark(item['met'])}"
        )
    for note in result["notes"]:
        print(f"note: {note}")
    sys.stdout.flush()


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def write_result(result: Result, results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{result['scenario']}.json"
    path.write_text(json.dumps(_json_safe(result), indent=2) + "\n")
    return path


def load_results(results_dir: Path) -> list[Result]:
    results: list[Result] = []
    for name in SCENARIO_ORDER:
        path = results_dir / f"{name}.json"
        if path.exists():
            with contextlib.suppress(ValueError):
                loaded = json.loads(path.read_text())
                if not loaded.get("quick"):
                    results.append(loaded)
    return results


_INTRO = """# Benchmarks

Generated by `python -m bench` (also `xbot bench [scenario]`) from `bench/results/*.json`; do not edit by
hand: the analysis at the end comes from `bench/analysis.md`. Every comparison ran its baselines in the
same invocation on the same machine, so read the **ratios** first: absolute times vary from run to run.

Rerun everything with `python -m bench` (about {total_minutes} minutes; every phase is bounded and the
throughput ramp is capped at 12 minutes per system, so a full run ends within about an hour even on a busy
machine), one scenario with `python -m bench precision`, or the smoke version of all five with
`python -m bench --quick` (about 1.5 minutes; its results go to `bench/results/quick/`). `--profile DIR` adds py-spy profiles of the worker and API.
"""


def _machine_section(machine: dict[str, Any]) -> str:
    rows: list[list[Any]] = [
        ["cores", f"{machine.get('logical_cores')} logical / {machine.get('physical_cores')} physical"],
        ["CPU", machine.get("cpu_model")],
        ["memory", f"{machine.get('memory_gb')} GB"],
        ["OS", machine.get("os")],
        ["Python", machine.get("python")],
        ["temporalio (Python SDK)", machine.get("temporalio")],
        ["temporal CLI (dev server)", machine.get("temporal_cli")],
        ["dev server store", machine.get("temporal_store", "in memory (runs before 2026-12-03)")],
        ["PostgreSQL", machine.get("postgresql")],
        ["load average at start", ", ".join(str(v) for v in machine.get("load_average_at_start", []))],
    ]
    return "## Machine\n\n" + markdown_table(["", ""], rows)


def _scenario_section(result: Result) -> str:
    parts = [f"## {result['scenario']}", ""]
    description = result.get("description")
    if description:
        parts += [description, ""]
    noise = result.get("noise") or {}
    parts.append(
        f"Run at {result['started_at']}, took {result['duration_seconds']:.0f} s. Other processes on the "
        f"machine used {noise.get('other_processes_cpu_seconds', '?')} CPU-seconds "
        f"({100 * float(noise.get('other_processes_share_of_machine') or 0):.0f}% of the machine) meanwhile."
    )
    parts.append("")
    table = result["table"]
    if table["columns"]:
        parts += [markdown_table(table["columns"], table["rows"]), ""]
    if result["ratios"]:
        parts.append(
            "Ratios: " + ", ".join(f"{key} = {_cell(value)}" for key, value in result["ratios"].items())
        )
        parts.append("")
    if result["goals"]:
        parts.append(
            markdown_table(
                ["goal", "target", "measured", "verdict"],
                [
                    [item["goal"], item["target"], item["value"], _goal_mark(item["met"])]
                    for item in result["goals"]
                ],
            )
        )
        parts.append("")
    for note in result["notes"]:
        parts.append(f"- {note}")
    return "\n".join(parts).rstrip() + "\n"


def regenerate_docs(results_dir: Path, docs_path: Path, total_minutes: int) -> Path | None:
    results = load_results(results_dir)
    if not results:
        return None
    sections = [_INTRO.format(total_minutes=total_minutes), _machine_section(results[0]["machine"])]
    goals = [
        [result["scenario"], item["goal"], item["target"], item["value"], _goal_mark(item["met"])]
        for result in results
        for item in result["goals"]
    ]
    if goals:
        sections.append(
            "## Goals at a glance\n\n"
            + markdown_table(["scenario", "goal", "target", "measured", "verdict"], goals)
        )
    sections += [_scenario_section(result) for result in results]
    if ANALYSIS_PATH.exists():
        sections.append(ANALYSIS_PATH.read_text().strip() + "\n")
    docs_path.parent.mkdir(parents=True, exist_ok=True)
    docs_path.write_text("\n\n".join(section.strip() for section in sections) + "\n")
    return docs_path
