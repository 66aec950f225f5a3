"""The crash-recovery load: its plan, the bots' schedules (slots), their rows in the database."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from xbot.storage import bots as bots_table
from xbot.storage import metrics as aggregates
from xbot.storage import task_definitions as definitions_table

INTERVALS_SECONDS = (5, 6, 7, 8, 9, 10)
# First due times are spread over this long after T0, whatever the interval.
FIRST_SPREAD_SECONDS = 5.0


@dataclass(frozen=True)
class Plan:
    bots: int
    lead_seconds: float  # "start the bots" -> T0, the first due time (all within FIRST_SPREAD)
    steady_seconds: float  # once steady: the reference window before the kill
    observe_seconds: float  # kill -> end of the window (due times checked up to here)
    grace_seconds: float  # wait after the window before reading the rows
    steady_timeout_seconds: float  # T0 -> give up waiting for a steady load (and kill anyway)


def plan(quick: bool) -> Plan:
    if quick:
        return Plan(
            bots=10,
            lead_seconds=2,
            steady_seconds=2,
            observe_seconds=16,
            grace_seconds=1,
            steady_timeout_seconds=15,
        )
    return Plan(
        bots=100,
        lead_seconds=8,
        steady_seconds=20,
        observe_seconds=50,
        grace_seconds=4,
        steady_timeout_seconds=90,
    )


@dataclass(frozen=True)
class BotSchedule:
    bot_id: str
    interval_seconds: int
    first_due_epoch: float

    def slot(self, due_epoch: float) -> tuple[int, float]:
        """The schedule slot nearest to a due time, and how far the due time is from it."""
        index = round((due_epoch - self.first_due_epoch) / self.interval_seconds)
        return index, due_epoch - (self.first_due_epoch + index * self.interval_seconds)

    def slots_between(self, start_epoch: float, end_epoch: float) -> range:
        """The slots due in [start, end)."""
        first = max(0, math.ceil((start_epoch - self.first_due_epoch) / self.interval_seconds))
        end = max(first, math.ceil((end_epoch - self.first_due_epoch) / self.interval_seconds))
        return range(first, end)


@dataclass(frozen=True)
class Row:
    bot_id: str
    status: str
    execution_key: str
    attempt: int
    due_epoch: float
    started_epoch: float
    completed_epoch: float  # NaN while open
    worker_id: str

    @property
    def run_key(self) -> str:
        """The run an attempt belongs to: its execution key without the attempt number."""
        return self.execution_key.rsplit("/", 1)[0]


def make_schedules(prefix: str, bots: int, t0: float) -> list[BotSchedule]:
    schedules = []
    for index in range(bots):
        interval = INTERVALS_SECONDS[index % len(INTERVALS_SECONDS)]
        first_due = t0 + FIRST_SPREAD_SECONDS * index / bots
        schedules.append(BotSchedule(f"{prefix}-{index:05d}", interval, first_due))
    return schedules


async def insert_bots(pool: asyncpg.Pool, schedules: list[BotSchedule], url: str) -> None:
    ids = [s.bot_id for s in schedules]
    async with pool.acquire() as connection, connection.transaction():
        await bots_table.insert_bare_bots(connection, ids, scheduler_enabled=True)
        await definitions_table.insert_interval_definitions(
            connection,
            ids,
            [s.interval_seconds for s in schedules],
            [datetime.fromtimestamp(s.first_due_epoch, UTC) for s in schedules],
            "webhook",
            {"url": url, "timeout_seconds": 30},
        )


async def read_rows(pool: asyncpg.Pool, prefix: str) -> list[Row]:
    records = await aggregates.fleet_attempts(pool, prefix)
    return [
        Row(
            r["bot_id"],
            r["status"],
            r["execution_key"] or "",
            r["attempt_number"],
            r["due"],
            r["started"],
            r["completed"],
            r["worker_id"],
        )
        for r in records
    ]
