"""Waiting for something to become true, in real time and bounded: a broken feature fails, not hangs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    check: Callable[[T], object] = bool,
    timeout: float = 60.0,
    what: str = "condition",
    interval: float = 0.05,
) -> T:
    """Poll `probe` until `check` accepts its value (by default: until the value is truthy), and
    return that value; fail after `timeout` seconds, showing the last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if check(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g} s; last value: {value!r}")
        await asyncio.sleep(interval)
