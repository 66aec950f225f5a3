"""Throughput: raise the load step by step until p99 lateness exceeds 1 s (or runs go missing).

The ceiling is the highest step a system sustained: p99 lateness (a missing run counts as infinitely
late) at most 1 s. The project runs `noop` tasks with its real bookkeeping in PostgreSQL; the bare
baseline runs a no-op activity behind a durable timer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.env import BenchEnv
from bench.report import Result, goal
from bench.scenarios import PROJECT_MODULES, RunContext, missing_module
from bench.scenarios.common import LoadResult, LoadRunner, LoadSpec, System
from bench.stats import latency_summary_ms, ratio
from xbot.storage.pool import create_pool

NAME = "throughput"
DESCRIPTION = (
    "Load raised step by step (bots x one task every 5 s) until p99 lateness exceeds 1 s; each step runs "
    "25 s and measures the last 20 s; a failing step runs once more (other sessions share the cores); after the first failing step, two more steps halve the gap. Sustained = the highest step whose p99 lateness (a run that never "
    "started counts as infinitely late) stayed within 1 s. The project runs `noop` tasks with its real "
    "bookkeeping in PostgreSQL. The two ramps (project, then bare) run twice, one round after the other, "
    "and both rounds are reported."
)
THRESHOLD_SECONDS = 1.0
# Issue 15: the project sustains at least 1.2x the bare loop's rate (its early wake absorbs queueing).
GOAL_RATIO_TO_BARE = 1.2
# Ramps per system in a full run: the ceiling moves with the machine's noise, so it is measured twice.
ROUNDS = 2
FULL_RATES = (20, 40, 60, 80, 100, 125, 150, 200, 250, 300)
INTERVAL_SECONDS = 5
REFINEMENTS = 2
# Bounds the ramp of one system even if every step has to run twice.
RAMP_BUDGET_SECONDS = 12 * 60


def step(rate: float) -> LoadSpec:
    bots = round(rate * INTERVAL_SECONDS)
    return LoadSpec(
        bots=bots,
        interval_seconds=INTERVAL_SECONDS,
        duration_seconds=25,
        warmup_seconds=5,
        lead_seconds=4 + bots * 0.01,
        grace_seconds=2.5,
    )


def steps(quick: bool) -> list[LoadSpec]:
    if quick:
        return [LoadSpec(bots=10, interval_seconds=2, duration_seconds=3, lead_seconds=2, grace_seconds=1.5)]
    return [step(rate) for rate in FULL_RATES]


def _step_seconds(load: LoadSpec) -> float:
    return load.lead_seconds + load.duration_seconds + load.grace_seconds + 3


def estimate_seconds(quick: bool) -> float:
    # Full: assume both systems stop around the 6th step, in each round.
    plan = steps(quick)
    per_system = sum(_step_seconds(load) for load in plan[: 1 if quick else 6 + REFINEMENTS]) + 5
    return 5 + (1 if quick else 2.5 * ROUNDS) * per_system


def _passes(load: LoadResult) -> bool:
    return latency_summary_ms(load.with_missing())["p99_ms"] <= THRESHOLD_SECONDS * 1000


async def _step(runner: LoadRunner, load: LoadSpec, results: list[LoadResult]) -> bool:
    """Run one step; a failing step runs once more, because other sessions share these cores and a
    burst of their work can fail a step on its own. Both runs are reported; the better one counts."""
    results.append(await runner.run(load, NAME))
    if _passes(results[-1]) or load.duration_seconds < 10:
        return _passes(results[-1])
    results.append(await runner.run(load, f"{NAME} (again)"))
    return _passes(results[-1])


async def _ramp(runner: LoadRunner, quick: bool) -> list[LoadResult]:
    """Steps up until one fails (twice), then narrows the gap between the last pass and the failure."""
    results: list[LoadResult] = []
    deadline = time.monotonic() + RAMP_BUDGET_SECONDS
    try:
        for load in steps(quick):
            if time.monotonic() > deadline or not await _step(runner, load, results):
                break
        for _ in range(0 if quick else REFINEMENTS):
            passed = [r.spec.rate for r in results if _passes(r)]
            failed = [r.spec.rate for r in results if not _passes(r) and r.spec.rate not in passed]
            if not passed or not failed or min(failed) - max(passed) <= 5 or time.monotonic() > deadline:
                break
            await _step(runner, step((max(passed) + min(failed)) / 2), results)
    finally:
        runner.stop()
    return sorted(results, key=lambda r: r.spec.rate)


def _ceiling(results: list[LoadResult]) -> float | None:
    sustained = [step.executed / step.window_seconds for step in results if _passes(step)]
    return round(max(sustained), 1) if sustained else None


def _rows(system: str, results: list[LoadResult]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for step in results:
        figures = step.summary()
        lateness = latency_summary_ms(step.with_missing())
        rows.append(
            [
                system,
                step.spec.bots,
                figures["offered_per_second"],
                figures["executed_per_second"],
                step.missing,
                lateness["p50_ms"],
                lateness["p99_ms"],
                figures["worker_cpu_ms_per_execution"],
                figures["server_cpu_ms_per_execution"],
                "yes" if _passes(step) else "no",
            ]
        )
    return rows


async def run(ctx: RunContext, result: Result) -> None:
    result["description"] = DESCRIPTION
    result["config"] = {
        "rates_per_second": list(FULL_RATES),
        "interval_seconds": INTERVAL_SECONDS,
        "threshold_seconds": THRESHOLD_SECONDS,
        "rounds": 1 if ctx.quick else ROUNDS,
    }
    missing = missing_module(*PROJECT_MODULES)
    rounds: list[dict[System, list[LoadResult]]] = []
    async with BenchEnv(ctx.postgres, ctx.workdir, NAME) as env:
        pool = None
        if missing is None:
            database_url = await ctx.postgres.new_database()
            pool = await create_pool(database_url, min_size=1, max_size=4)
        else:
            result["notes"].append(f"project not available yet ({missing} is missing); baseline only")
        try:
            for _ in range(1 if ctx.quick else ROUNDS):
                runners: dict[System, LoadRunner] = {}
                if pool is not None:
                    runners["project"] = LoadRunner(env, "project", ctx.progress, pool, database_url, "noop")
                runners["bare"] = LoadRunner(env, "bare", ctx.progress)
                if ctx.quick:  # quick mode only proves the figures are produced: share the machine
                    outcomes = await asyncio.gather(*(_ramp(runner, True) for runner in runners.values()))
                    rounds.append(dict(zip(runners, outcomes, strict=True)))
                else:
                    rounds.append({system: await _ramp(runner, False) for system, runner in runners.items()})
        finally:
            if pool is not None:
                await pool.close()

    result["systems"] = {}
    result["ratios"] = {}
    result["table"] = {
        "columns": [
            "system",
            "bots",
            "offered/s",
            "ran/s",
            "missing",
            "p50 ms",
            "p99 ms",
            "worker CPU ms/exec",
            "server CPU ms/exec",
            "sustained",
        ],
        "rows": [],
    }
    for number, ramps in enumerate(rounds, start=1):
        _report_round(result, number if len(rounds) > 1 else None, ramps)


def _report_round(result: Result, number: int | None, ramps: dict[System, list[LoadResult]]) -> None:
    suffix = f", ramp {number}" if number is not None else ""
    ceilings = {system: _ceiling(steps_run) for system, steps_run in ramps.items()}
    for system, steps_run in ramps.items():
        result["systems"][f"{system}{suffix}"] = {
            "sustained_executions_per_second": ceilings[system],
            "steps": [step.summary() for step in steps_run],
        }
    result["table"]["rows"] += _rows(f"project{suffix}", ramps.get("project", [])) + _rows(
        f"bare Temporal{suffix}", ramps["bare"]
    )
    share = ratio(ceilings.get("project"), ceilings.get("bare"))
    result["ratios"][f"project ceiling / bare ceiling{suffix}"] = share
    for system, ceiling in ceilings.items():
        top = max((step.spec.rate for step in ramps[system]), default=None)
        if top is not None and any(_passes(step) for step in ramps[system] if step.spec.rate == top):
            result["notes"].append(
                f"{system}{suffix}: still within 1 s at the last step; its ceiling is higher"
            )
        result["notes"].append(f"{system}{suffix}: sustained {ceiling} executions/s")
    if "project" in ramps:
        result["goals"].append(
            goal(
                f"project ceiling vs bare{suffix}",
                f">= {GOAL_RATIO_TO_BARE}x bare",
                share,
                None if share is None else share >= GOAL_RATIO_TO_BARE,
            )
        )
