"""Single-flight with a short memory: concurrent calls for one key share one computation, and an
answer is reused for `fresh_for` seconds.

Fifty clients polling one bot's status cost one describe and one database read per `fresh_for`, not
fifty. Whoever changes the state (start, stop, task edits through the API) calls `forget`, so a read
right after a change never sees the answer from before it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self, fresh_for: float = 0.0, max_kept: int = 10_000) -> None:
        self.fresh_for = fresh_for
        self.max_kept = max_kept
        self._flights: dict[str, asyncio.Future[T]] = {}
        self._kept: dict[str, tuple[float, T]] = {}
        self.shared = 0  # calls answered by another call's computation or a kept answer

    async def run(
        self, key: str, compute: Callable[[], Awaitable[T]], keep: Callable[[T], bool] | None = None
    ) -> T:
        """`compute`'s answer, shared; `keep` says whether it may be reused (default: always)."""
        kept = self._kept.get(key)
        if kept is not None and time.monotonic() - kept[0] < self.fresh_for:
            self.shared += 1
            return kept[1]
        flight = self._flights.get(key)
        if flight is not None:
            self.shared += 1
            # Shielded: one waiter giving up (a client disconnecting) must not cancel the others' answer.
            return await asyncio.shield(flight)
        began = time.monotonic()
        flight = asyncio.ensure_future(compute())
        self._flights[key] = flight

        def done(finished: asyncio.Future[T]) -> None:
            if self._flights.get(key) is finished:
                del self._flights[key]
                reusable = self.fresh_for > 0 and not finished.cancelled() and finished.exception() is None
                if reusable and (keep is None or keep(finished.result())):
                    if len(self._kept) >= self.max_kept:
                        self._kept.clear()  # bounded; a miss only costs one read
                    # Dated from when the read began: it shows the state of that moment at best.
                    self._kept[key] = (began, finished.result())

        flight.add_done_callback(done)
        return await asyncio.shield(flight)

    def forget(self, key: str) -> None:
        """The state behind `key` changed: the next call computes afresh (not joining a read begun before)."""
        self._kept.pop(key, None)
        self._flights.pop(key, None)
