"""SingleFlight: shared computations, short reuse, forgetting, and waiters that give up."""

from __future__ import annotations

import asyncio
import contextlib

from xbot.singleflight import SingleFlight


async def test_concurrent_calls_share_one_computation_and_reuse_it_briefly() -> None:
    flights: SingleFlight[int] = SingleFlight(fresh_for=60)
    calls = 0
    gate = asyncio.Event()

    async def compute() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return calls

    waiters = [asyncio.create_task(flights.run("bot", compute)) for _ in range(20)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*waiters) == [1] * 20 and calls == 1
    assert await flights.run("bot", compute) == 1  # kept
    flights.forget("bot")
    assert await flights.run("bot", compute) == 2 and flights.shared == 20


async def test_an_answer_refused_by_keep_or_a_failure_is_not_reused() -> None:
    flights: SingleFlight[int] = SingleFlight(fresh_for=60)
    calls = 0

    async def compute() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("down")
        return calls

    with contextlib.suppress(RuntimeError):
        await flights.run("bot", compute)
    assert await flights.run("bot", compute, keep=lambda value: value != 2) == 2
    assert await flights.run("bot", compute) == 3
    assert await flights.run("bot", compute) == 3


async def test_a_waiter_that_gives_up_does_not_cancel_the_others() -> None:
    flights: SingleFlight[str] = SingleFlight()
    gate = asyncio.Event()

    async def compute() -> str:
        await gate.wait()
        return "answer"

    first = asyncio.create_task(flights.run("bot", compute))
    second = asyncio.create_task(flights.run("bot", compute))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    gate.set()
    assert await second == "answer"
