"""The baselines' workflows and their one no-op activity (no database, no policy).

Kept apart from `bench.baselines` so the workflow sandbox imports as little as possible.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import IO

from temporalio import activity, workflow
from temporalio.common import SearchAttributeKey

SCHEDULED_START_TIME = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")
ACTIVITY_TIMEOUT = timedelta(seconds=60)
# The `kind` column of each baseline's samples.
BARE_KIND = "bare"
BARE_LOCAL_KIND = "bare-local"
SCHEDULE_KIND = "schedule"


@dataclass
class BareLoopInput:
    bot_id: str
    first_due_epoch: float
    interval_seconds: float
    until_epoch: float
    # Run the no-op as a local activity (inside the workflow task the timer wakes): what the
    # activity task round trip costs.
    local: bool = False


@dataclass
class RunSample:
    kind: str
    bot_id: str
    due_epoch: float


_samples: IO[str] | None = None


def _samples_file() -> IO[str] | None:
    global _samples
    if _samples is None and os.environ.get("BENCH_SAMPLES_PATH"):
        _samples = open(os.environ["BENCH_SAMPLES_PATH"], "a", buffering=1)  # noqa: SIM115
    return _samples


@activity.defn(name="bench_noop")
async def bench_noop(sample: RunSample) -> float:
    """The no-op task: notes when it started (that is what lateness measures) and returns."""
    started = time.time()
    output = _samples_file()
    if output is not None:
        output.write(f"{sample.kind}\t{sample.bot_id}\t{sample.due_epoch:.6f}\t{started:.6f}\n")
    return started


@workflow.defn(name="BenchBareLoop")
class BareLoop:
    """Waits with a durable timer until each due time, then runs the no-op activity (or local
    activity)."""

    @workflow.run
    async def run(self, params: BareLoopInput) -> int:
        runs = 0
        while True:
            due = params.first_due_epoch + runs * params.interval_seconds
            if due >= params.until_epoch:
                return runs
            delay = due - workflow.now().timestamp()
            if delay > 0:
                await workflow.sleep(delay)
            execute = workflow.execute_local_activity if params.local else workflow.execute_activity
            kind = BARE_LOCAL_KIND if params.local else BARE_KIND
            await execute(
                bench_noop, RunSample(kind, params.bot_id, due), start_to_close_timeout=ACTIVITY_TIMEOUT
            )
            runs += 1


@workflow.defn(name="BenchScheduledRun")
class ScheduledRun:
    """Started by a Temporal Schedule; its due time is the schedule's nominal start time."""

    @workflow.run
    async def run(self, bot_id: str) -> None:
        info = workflow.info()
        nominal = info.typed_search_attributes.get(SCHEDULED_START_TIME)
        due = (nominal or info.workflow_start_time or workflow.now()).timestamp()
        await workflow.execute_activity(
            bench_noop, RunSample(SCHEDULE_KIND, bot_id, due), start_to_close_timeout=ACTIVITY_TIMEOUT
        )
