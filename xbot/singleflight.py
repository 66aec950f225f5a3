"""Single-flight: concurrent calls for one key share one computation.

Fifty clients polling one bot's status cost one describe and one database read, not fifty.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[T]] = {}
        self.shared = 0  # calls answered by another call's computation (for tests and metrics)

    async def run(self, key: str, compute: Callable[[], Awaitable[T]]) -> T:
        flight = self._flights.get(key)
        if flight is not None:
            self.shared += 1
            # Shielded: one waiter giving up (a client disconnecting) must not cancel the others' answer.
            return await asyncio.shield(flight)
        flight = asyncio.ensure_future(compute())
        self._flights[key] = flight
        flight.add_done_callback(lambda _: self._flights.pop(key, None))
        return await asyncio.shield(flight)
