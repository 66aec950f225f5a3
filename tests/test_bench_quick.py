"""The benchmark harness cannot rot: every scenario's quick mode runs once and produces its figures.

This checks that the figures exist (keys present, counts above zero), never their values: performance
claims live in docs/benchmarks.md, made by `python -m bench`, not in timed assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.report import regenerate_docs
from bench.scenarios import PROJECT_MODULES, SCENARIO_NAMES, missing_module

pytestmark = [pytest.mark.devserver, pytest.mark.system]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
QUICK_RUN_TIMEOUT_SECONDS = 300


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench-results")
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    if os.environ.get("TEST_DATABASE_URL"):
        env["DATABASE_URL"] = os.environ["TEST_DATABASE_URL"]
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=QUICK_RUN_TIMEOUT_SECONDS,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    results = {path.stem: json.loads(path.read_text()) for path in out.glob("*.json")}
    assert sorted(results) == sorted(SCENARIO_NAMES), completed.stderr[-3000:]
    return results


def _project_ready(*extra: str) -> bool:
    return missing_module(*extra, *PROJECT_MODULES) is None


def _check_precision(result: dict[str, Any]) -> None:
    systems = result["systems"]
    expected = ["bare", "bare_local", "schedules"] + (["project"] if _project_ready() else [])
    for system in expected:
        lateness = systems[system]["lateness"]
        assert lateness["count"] > 0, system
        assert {"p50_ms", "p95_ms", "p99_ms", "max_ms"} <= lateness.keys()
    if _project_ready():
        assert systems["project"]["webhook_arrival_lateness"]["count"] > 0
        assert "project p99 / bare p99" in result["ratios"]
        assert result["ratios"]["bare local-activity CPU per execution / bare CPU per execution"] is not None
        assert len(result["ratios"]["per round: project CPU per execution / bare CPU per execution"]) == 1
        assert result["goals"][0]["value"] is not None


def _check_throughput(result: dict[str, Any]) -> None:
    systems = result["systems"]
    for system in ["bare"] + (["project"] if _project_ready() else []):
        steps = systems[system]["steps"]
        assert steps and steps[0]["executed"] > 0, system
        assert "sustained_executions_per_second" in systems[system]


def _check_idle(result: dict[str, Any]) -> None:
    if not _project_ready():
        return
    project = result["systems"]["project"]
    for phase in ("zero_bots", "idle_bots"):
        assert project[phase]["worker_rss_mb"] > 0
        assert "worker_cpu_seconds" in project[phase] and "server_cpu_seconds" in project[phase]
    assert project["start_calls_seconds"] > 0
    # The start storm beside the bare loops' (each with its own server), as a ratio.
    bare = result["systems"]["bare"]
    assert 0 < bare["start_calls_seconds"] <= bare["settled_after_seconds"]
    assert bare["server_cpu_ms_per_bot"] > 0
    assert result["ratios"]["start storm settled, project / bare"] > 0


def _check_history(result: dict[str, Any]) -> None:
    bare = result["systems"]["bare"]
    assert bare["executions"] > 0 and bare["marginal_events_per_execution"] is not None
    if _project_ready():
        project = result["systems"]["project"]["short"]
        assert project["executions"] > 0 and project["events"] > 0


def _check_api_feed(result: dict[str, Any]) -> None:
    if not _project_ready("api.app"):
        return
    project = result["systems"]["project"]
    for row in ("status", "status_query_reference", "status_fleet", "list", "start_stop"):
        assert project[row]["count"] > 0, row
    for phase in ("feed_1_client", "feed_100_clients"):
        assert project[phase]["delivery_delay"]["count"] > 0, phase
        assert project[phase]["queries_per_second"] is not None


def _check_crash_recovery(result: dict[str, Any]) -> None:
    if not _project_ready():
        return
    project = result["systems"]["project"]
    counts = project["counts"]
    assert counts["expected"] > 0
    # A loaded machine can reach the kill with no handler in flight (the wait for one is bounded):
    # then nothing is lost. Whatever was lost is re-run, exactly once.
    assert counts["lost_attempts"] > 0 or project["in_flight_handlers_at_kill"] == 0, counts
    assert counts["lost_rerun"] == counts["lost_attempts"], counts
    assert counts["lost_rerun_more_than_once"] == 0, counts
    assert project["killed_bots_recovery"]["count"] > 0 and "max_s" in project["killed_bots_recovery"]
    assert {"without_row", "lost_rerun", "attempts_completed_twice"} <= project["counts"].keys()
    assert result["goals"][0]["value"] is not None


CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "precision": _check_precision,
    "throughput": _check_throughput,
    "idle": _check_idle,
    "history": _check_history,
    "api_feed": _check_api_feed,
    "crash_recovery": _check_crash_recovery,
}


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_quick_mode_produces_figures(quick_results: dict[str, dict[str, Any]], scenario: str) -> None:
    result = quick_results[scenario]
    assert result["quick"] is True
    assert not [note for note in result["notes"] if note.startswith("failed")], result["notes"]
    assert result["machine"]["logical_cores"] and result["machine"]["postgresql"]
    CHECKS[scenario](result)


def test_summary_is_written_from_results(quick_results: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    for name, result in quick_results.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(result | {"quick": False}))
    docs = regenerate_docs(tmp_path, tmp_path / "benchmarks.md", total_minutes=1)
    assert docs is not None
    text = docs.read_text()
    assert "## Machine" in text
    for name in SCENARIO_NAMES:
        assert f"## {name}" in text
