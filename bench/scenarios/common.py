"""One timed load, run the same way for the project and for both baselines.

A load is N bots, each with one task every `interval` seconds, their first due times spread evenly
over one interval starting at T0. Due times of the whole window are known in advance, so each
system's executions are matched to them by (bot, grid index); one that never started counts as
missing (treated as infinitely late).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg

from bench.baseline_workflows import BARE_KIND, BARE_LOCAL_KIND, SCHEDULE_KIND
from bench.baselines import (
    BotPlan,
    Sample,
    create_schedules,
    delete_schedules,
    read_samples,
    start_bare_loops,
)
from bench.env import BenchEnv, ManagedProcess
from bench.progress import Progress
from bench.receiver import WebhookReceiver
from bench.stats import latency_summary_ms
from workflows.models import WORKFLOW_NAME
from xbot import bot_control
from xbot.storage import bots as bots_table
from xbot.storage import metrics as aggregates
from xbot.storage import task_definitions as definitions_table

System = Literal["project", "bare", "bare_local", "schedules"]
START_CONCURRENCY = 50


@dataclass(frozen=True)
class LoadSpec:
    bots: int
    interval_seconds: float
    duration_seconds: float  # due times in [T0, T0 + duration)
    lead_seconds: float  # from "start the bots" to T0
    warmup_seconds: float = 0.0  # due times before T0 + warmup are not measured
    grace_seconds: float = 3.0  # wait after the window for late executions

    @property
    def rate(self) -> float:
        return self.bots / self.interval_seconds


@dataclass
class LoadResult:
    system: System
    spec: LoadSpec
    latenesses: list[float] = field(default_factory=list)
    expected: int = 0
    missing: int = 0
    webhook_latenesses: list[float] = field(default_factory=list)
    worker_cpu_seconds: float = 0.0
    server_cpu_seconds: float = 0.0
    start_seconds: float = 0.0
    rounds: int = 1  # runs of `spec` added up in this result (see `combine`)

    @property
    def executed(self) -> int:
        return len(self.latenesses)

    @property
    def window_seconds(self) -> float:
        return self.rounds * (self.spec.duration_seconds - self.spec.warmup_seconds)

    def with_missing(self) -> list[float]:
        return self.latenesses + [math.inf] * self.missing

    def summary(self) -> dict[str, Any]:
        figures: dict[str, Any] = {
            "bots": self.spec.bots,
            "offered_per_second": round(self.spec.rate, 2),
            "expected": self.expected,
            "executed": self.executed,
            "missing": self.missing,
            "executed_per_second": round(self.executed / max(self.window_seconds, 1e-6), 2),
            "lateness": latency_summary_ms(self.latenesses),
            "worker_cpu_seconds": round(self.worker_cpu_seconds, 2),
            "server_cpu_seconds": round(self.server_cpu_seconds, 2),
            "start_seconds": round(self.start_seconds, 2),
            "worker_cpu_ms_per_execution": round(1000 * self.worker_cpu_seconds / max(self.executed, 1), 2),
            "server_cpu_ms_per_execution": round(1000 * self.server_cpu_seconds / max(self.executed, 1), 2),
        }
        if self.missing:
            figures["lateness_with_missing"] = latency_summary_ms(self.with_missing())
        if self.webhook_latenesses:
            figures["webhook_arrival_lateness"] = latency_summary_ms(self.webhook_latenesses)
        return figures


def combine(results: list[LoadResult]) -> LoadResult:
    """One system's rounds of the same load as one result: samples pooled, CPU and counts added."""
    first = results[0]
    return LoadResult(
        system=first.system,
        spec=first.spec,
        latenesses=[value for result in results for value in result.latenesses],
        expected=sum(result.expected for result in results),
        missing=sum(result.missing for result in results),
        webhook_latenesses=[value for result in results for value in result.webhook_latenesses],
        worker_cpu_seconds=sum(result.worker_cpu_seconds for result in results),
        server_cpu_seconds=sum(result.server_cpu_seconds for result in results),
        start_seconds=max(result.start_seconds for result in results),
        rounds=sum(result.rounds for result in results),
    )


def make_plans(prefix: str, spec: LoadSpec, t0: float) -> list[BotPlan]:
    return [
        BotPlan(f"{prefix}-{index:05d}", t0 + index * spec.interval_seconds / spec.bots)
        for index in range(spec.bots)
    ]


def match(
    plans: list[BotPlan], spec: LoadSpec, t0: float, samples: list[tuple[str, float, float]]
) -> tuple[list[float], int]:
    """Latenesses of the measured window's due times, and how many of them never ran."""
    first_due = {plan.bot_id: plan.first_due_epoch for plan in plans}
    window_start, window_end = t0 + spec.warmup_seconds, t0 + spec.duration_seconds
    expected: set[tuple[str, int]] = set()
    for plan in plans:
        index = 0
        while (due := plan.first_due_epoch + index * spec.interval_seconds) < window_end:
            if due >= window_start:
                expected.add((plan.bot_id, index))
            index += 1
    seen: dict[tuple[str, int], float] = {}
    for bot_id, due, started in samples:
        if bot_id not in first_due:
            continue
        key = (bot_id, round((due - first_due[bot_id]) / spec.interval_seconds))
        if key in expected:
            # The first start of that due time counts (a retry is not a new execution).
            seen[key] = min(seen.get(key, math.inf), started - due)
    return list(seen.values()), len(expected) - len(seen)


async def insert_project_bots(
    pool: asyncpg.Pool, plans: list[BotPlan], interval_seconds: float, task_type: str, config: dict[str, Any]
) -> None:
    ids = [plan.bot_id for plan in plans]
    dues = [datetime.fromtimestamp(plan.first_due_epoch, UTC) for plan in plans]
    every = max(1, round(interval_seconds))
    async with pool.acquire() as connection, connection.transaction():
        await bots_table.insert_bare_bots(connection, ids, scheduler_enabled=True)
        await definitions_table.insert_interval_definitions(
            connection, ids, [every] * len(ids), dues, task_type, config
        )


async def start_project_bots(env: BenchEnv, task_queue: str, bot_ids: list[str]) -> None:
    """Signal-with-start, as the API does: idempotent."""
    client = await env.project_client()
    semaphore = asyncio.Semaphore(START_CONCURRENCY)

    async def start(bot_id: str) -> None:
        async with semaphore:
            await bot_control.signal_start(client, bot_id, task_queue)

    await asyncio.gather(*(start(bot_id) for bot_id in bot_ids))


async def project_samples(pool: asyncpg.Pool, prefix: str) -> list[tuple[str, float, float]]:
    return await aggregates.first_attempt_times(pool, prefix)


async def _sleep_until(epoch: float) -> None:
    delay = epoch - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


@dataclass
class LoadRunner:
    """Runs loads for one system on one environment; the worker is started once per runner."""

    env: BenchEnv
    system: System
    progress: Progress
    pool: asyncpg.Pool | None = None
    database_url: str | None = None
    task_type: str = "noop"
    receiver: WebhookReceiver | None = None
    task_queue: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:8]}")
    worker: ManagedProcess | None = None
    _samples_path: Any = None

    async def start(self) -> ManagedProcess:
        if self.system == "project":
            assert self.database_url is not None
            self.worker = await self.env.start_project_worker(self.task_queue, self.database_url)
        else:
            self._samples_path = self.env.workdir / f"samples-{self.task_queue}.tsv"
            self.worker = await self.env.start_baseline_worker(self.task_queue, self._samples_path)
        return self.worker

    def stop(self) -> None:
        if self.worker is not None:
            self.env.stop_worker(self.worker)
            self.worker = None

    async def run(self, spec: LoadSpec, label: str) -> LoadResult:
        if self.worker is None:
            await self.start()
        assert self.worker is not None and self.env.temporal is not None
        prefix = f"{self.system[0]}{uuid.uuid4().hex[:6]}"
        result = LoadResult(self.system, spec)
        total = spec.lead_seconds + spec.duration_seconds + spec.grace_seconds
        self.progress.set_phase(f"{label} {self.system} {spec.bots} bots @ {spec.rate:.0f}/s", total)
        t0 = time.time() + spec.lead_seconds
        plans = make_plans(prefix, spec, t0)
        until = t0 + spec.duration_seconds
        begun = time.monotonic()
        schedule_ids: list[str] = []
        if self.system == "project":
            assert self.pool is not None
            config = {"url": self.receiver.url} if self.receiver and self.task_type == "webhook" else {}
            await insert_project_bots(self.pool, plans, spec.interval_seconds, self.task_type, config)
            await start_project_bots(self.env, self.task_queue, [plan.bot_id for plan in plans])
        elif self.system in ("bare", "bare_local"):
            await start_bare_loops(
                self.env.client,
                self.task_queue,
                plans,
                spec.interval_seconds,
                until,
                local=self.system == "bare_local",
            )
        else:
            schedule_ids = await create_schedules(
                self.env.client, self.task_queue, plans, spec.interval_seconds, until
            )
        result.start_seconds = time.monotonic() - begun
        if time.time() > t0:
            self.progress.note(
                f"{self.system}: starting {spec.bots} bots overran the lead time by {time.time() - t0:.1f}s"
            )
        await _sleep_until(t0 + spec.warmup_seconds)
        cpu_worker, cpu_server = self.worker.cpu_seconds(), self.env.temporal.cpu_seconds()
        await _sleep_until(until)
        result.worker_cpu_seconds = self.worker.cpu_seconds() - cpu_worker
        result.server_cpu_seconds = self.env.temporal.cpu_seconds() - cpu_server
        await _sleep_until(until + spec.grace_seconds)
        await self._collect(result, plans, spec, t0, prefix)
        await self._cleanup(prefix, schedule_ids)
        return result

    async def _collect(
        self, result: LoadResult, plans: list[BotPlan], spec: LoadSpec, t0: float, prefix: str
    ) -> None:
        if self.system == "project":
            assert self.pool is not None
            samples = await project_samples(self.pool, prefix)
            if self.receiver is not None:
                arrivals = [
                    (str(arrival.body.get("botId")), _epoch(arrival.body.get("dueAt")), arrival.at)
                    for arrival in self.receiver.arrivals
                    if str(arrival.body.get("botId", "")).startswith(prefix)
                ]
                result.webhook_latenesses, _ = match(plans, spec, t0, arrivals)
        else:
            kind = {"bare": BARE_KIND, "bare_local": BARE_LOCAL_KIND}.get(self.system, SCHEDULE_KIND)
            samples = [
                (sample.bot_id, sample.due_epoch, sample.started_epoch)
                for sample in _read(self._samples_path)
                if sample.kind == kind and sample.bot_id.startswith(prefix)
            ]
        result.latenesses, result.missing = match(plans, spec, t0, samples)
        result.expected = result.executed + result.missing

    async def _cleanup(self, prefix: str, schedule_ids: list[str]) -> None:
        if schedule_ids:
            await delete_schedules(self.env.client, schedule_ids)
        workflow_type = {
            "project": WORKFLOW_NAME,
            "bare": "BenchBareLoop",
            "bare_local": "BenchBareLoop",
            "schedules": "BenchScheduledRun",
        }
        await self.env.terminate_running(f"WorkflowType = '{workflow_type[self.system]}'")


def _read(path: Any) -> list[Sample]:
    return read_samples(path) if path is not None else []


def _epoch(value: Any) -> float:
    if not isinstance(value, str):
        return math.nan
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def run_loads(
    runners: dict[System, LoadRunner], spec: LoadSpec, label: str, *, concurrently: bool = False
) -> dict[System, LoadResult]:
    """The same load on each system, one after the other (or all at once), stopping each worker after."""

    async def one(runner: LoadRunner) -> LoadResult:
        try:
            return await runner.run(spec, label)
        finally:
            runner.stop()

    if concurrently:
        outcomes = await asyncio.gather(*(one(runner) for runner in runners.values()))
        return dict(zip(runners, outcomes, strict=True))
    return {system: await one(runner) for system, runner in runners.items()}
