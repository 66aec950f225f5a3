"""One progress line: which scenario and phase runs, and roughly how long is left."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """Prints `[scenario] phase  elapsed/estimate  ~left overall` every few seconds to stderr."""

    def __init__(self, total_estimate_seconds: float, *, interval_seconds: float = 5.0) -> None:
        self._started = time.monotonic()
        self._total_estimate = total_estimate_seconds
        self._interval = interval_seconds
        self._label = "starting"
        self._phase_started = self._started
        self._phase_estimate = 0.0
        self._ticker: asyncio.Task[None] | None = None
        self._tty = sys.stderr.isatty()

    def set_phase(self, label: str, estimate_seconds: float) -> None:
        self._label = label
        self._phase_started = time.monotonic()
        self._phase_estimate = estimate_seconds
        self.print_line()

    def add_to_estimate(self, seconds: float) -> None:
        self._total_estimate += seconds

    def line(self) -> str:
        now = time.monotonic()
        elapsed_total = now - self._started
        phase_elapsed = now - self._phase_started
        left = max(0.0, self._total_estimate - elapsed_total)
        return (
            f"bench {self._label}: {_clock(phase_elapsed)}/{_clock(self._phase_estimate)}"
            f"  | total {_clock(elapsed_total)}, about {_clock(left)} left"
        )

    def print_line(self) -> None:
        end = "\r" if self._tty else "\n"
        print(self.line().ljust(100 if self._tty else 0), end=end, file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        if self._tty:
            print(" " * 100, end="\r", file=sys.stderr)
        print(f"bench: {message}", file=sys.stderr, flush=True)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.print_line()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Progress]:
        self._ticker = asyncio.create_task(self._tick())
        try:
            yield self
        finally:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            if self._tty:
                print(file=sys.stderr)
