"""Time, as every rule of edgecache reads it: one seam, so tests drive it instead of sleeping.

TTLs, offline grants, deletion checks, stalls, scrub pacing, retry backoff and
fill cool-downs all take a :class:`Clock`. The daemon passes :data:`SYSTEM`;
tests pass ``tests.support.clock.FakeClock`` and move time by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol


class Clock(Protocol):
    """Wall time for records, monotonic time for intervals, and sleeping on the latter."""

    def time(self) -> float:
        """Seconds since the epoch (what index rows and API answers show)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps: every interval and deadline uses it."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of monotonic time."""
        ...

    async def wait(self, event: asyncio.Event, seconds: float | None) -> bool:
        """Wait until ``event`` is set or ``seconds`` pass (None: no limit); True if it was set."""
        ...


class SystemClock:
    """The real clocks and asyncio's own timers."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait(self, event: asyncio.Event, seconds: float | None) -> bool:
        # asyncio.timeout, not wait_for: on Python 3.11, wait_for swallows a cancel that
        # arrives in the same loop turn as the event (python/cpython#86296), and a
        # stopped prefetch worker would then wait on for ever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()
        return event.is_set()


SYSTEM = SystemClock()
