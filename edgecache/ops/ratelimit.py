"""A byte-rate cap that many streams share: prefetch fills, the scrubber's reads.

A token bucket that may go into debt: a stream takes the bytes it just read
and then waits off the debt, so a chunk larger than the bucket never blocks
forever and the long-run rate is exact. Waits can be ended early by an event
(a live caller joined a prefetch fill: it must not be slowed by the cap).
Time, both the refill and the waits, is the injected :class:`~edgecache.clock.Clock`.
"""

from __future__ import annotations

import asyncio

from edgecache.clock import SYSTEM, Clock


class TokenBucket:
    """``rate`` bytes per second on average, bursts of at most ``burst`` bytes."""

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.rate = rate
        #: a quarter second's worth by default: an idle bucket does not save up
        #: enough to let a later stream run noticeably past the cap
        self.burst = burst if burst is not None else rate / 4
        self._clock = clock
        self._tokens = 0.0
        self._stamp = clock.monotonic()

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def debit(self, amount: int) -> float:
        """Take ``amount`` bytes' worth now; the seconds to wait to stay under the rate."""
        if self.unlimited:
            return 0.0
        now = self._clock.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= amount
        return max(0.0, -self._tokens / self.rate)

    async def take(self, amount: int, *, until: asyncio.Event | None = None) -> None:
        """Debit ``amount`` and sleep it off; ``until`` being set ends the sleep early."""
        delay = self.debit(amount)
        if delay <= 0:
            return
        if until is None:
            await self._clock.sleep(delay)
            return
        await self._clock.wait(until, delay)
