"""Baselines run beside the project: bare Temporal timers and Temporal Schedules.

- Bare Temporal: one `BenchBareLoop` workflow per bot that sleeps with a durable timer until each
  due time and runs one no-op activity. No database, no policy.
- Temporal Schedules: one `client.create_schedule` per bot task with an interval spec, starting a
  short `BenchScheduledRun` workflow that runs the same no-op activity; its due time is the
  schedule's nominal time (`TemporalScheduledStartTime`).

Lateness = activity start - due time, written by the activity to a samples file (one line each).
`python -m bench.baselines --address A --task-queue Q --samples FILE` runs the baseline worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from bench.baseline_workflows import BareLoop, BareLoopInput, ScheduledRun, bench_noop

START_CONCURRENCY = 50


@dataclass(frozen=True)
class BotPlan:
    """One bot of a load: its id and the epoch of its first due time (then every `interval`)."""

    bot_id: str
    first_due_epoch: float


@dataclass(frozen=True)
class Sample:
    kind: str
    bot_id: str
    due_epoch: float
    started_epoch: float

    @property
    def lateness(self) -> float:
        return self.started_epoch - self.due_epoch


def read_samples(path: Path) -> list[Sample]:
    samples: list[Sample] = []
    if not path.exists():
        return samples
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 4:
            samples.append(Sample(parts[0], parts[1], float(parts[2]), float(parts[3])))
    return samples


async def start_bare_loops(
    client: Client,
    task_queue: str,
    plans: list[BotPlan],
    interval_seconds: float,
    until_epoch: float,
    *,
    local: bool = False,
) -> None:
    """One bare loop workflow per bot; each ends by itself after `until_epoch`. `local`: the no-op
    runs as a local activity."""
    semaphore = asyncio.Semaphore(START_CONCURRENCY)

    async def start(plan: BotPlan) -> None:
        async with semaphore:
            await client.start_workflow(
                BareLoop.run,
                BareLoopInput(plan.bot_id, plan.first_due_epoch, interval_seconds, until_epoch, local),
                id=f"bare-{plan.bot_id}",
                task_queue=task_queue,
            )

    await asyncio.gather(*(start(plan) for plan in plans))


async def create_schedules(
    client: Client, task_queue: str, plans: list[BotPlan], interval_seconds: float, until_epoch: float
) -> list[str]:
    """One schedule per bot task; the interval spec's offset puts its first action at the plan's due."""
    semaphore = asyncio.Semaphore(START_CONCURRENCY)
    every_ms = round(interval_seconds * 1000)

    async def create(plan: BotPlan) -> str:
        schedule_id = f"sched-{plan.bot_id}"
        offset_ms = round(plan.first_due_epoch * 1000) % every_ms
        schedule = Schedule(
            action=ScheduleActionStartWorkflow(
                ScheduledRun.run, plan.bot_id, id=f"sched-run-{plan.bot_id}", task_queue=task_queue
            ),
            spec=ScheduleSpec(
                intervals=[
                    ScheduleIntervalSpec(
                        every=timedelta(milliseconds=every_ms), offset=timedelta(milliseconds=offset_ms)
                    )
                ],
                start_at=datetime.fromtimestamp(plan.first_due_epoch - 0.5, UTC),
                end_at=datetime.fromtimestamp(until_epoch, UTC),
            ),
            policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.ALLOW_ALL),
        )
        async with semaphore:
            await client.create_schedule(schedule_id, schedule)
        return schedule_id

    return list(await asyncio.gather(*(create(plan) for plan in plans)))


async def delete_schedules(client: Client, schedule_ids: list[str]) -> None:
    semaphore = asyncio.Semaphore(START_CONCURRENCY)

    async def delete(schedule_id: str) -> None:
        async with semaphore:
            with contextlib.suppress(Exception):
                await client.get_schedule_handle(schedule_id).delete()

    await asyncio.gather(*(delete(schedule_id) for schedule_id in schedule_ids))


async def run_worker(address: str, task_queue: str) -> None:
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[BareLoop, ScheduledRun],
        activities=[bench_noop],
        max_concurrent_activities=1000,
        # Tuned as the project's worker is (launch/worker.py): the sandbox takes the workflow module
        # as imported once instead of importing it again for each new workflow instance, which was
        # ~40% of this worker's CPU while thousands of loops started.
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules("bench.baseline_workflows")
        ),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with worker:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines", description="baseline worker")
    parser.add_argument("--address", required=True)
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--samples", required=True, type=Path)
    args = parser.parse_args(argv)
    os.environ["BENCH_SAMPLES_PATH"] = str(args.samples)
    asyncio.run(run_worker(args.address, args.task_queue))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
