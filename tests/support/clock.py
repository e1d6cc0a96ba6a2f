"""A clock that moves only when a test says so (``await clock.advance(seconds)``).

Sleepers wake in deadline order as time passes them; ``advance`` then lets the
event loop run what they scheduled, so a test asserts the rule's outcome right
after moving time, without sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

from lab.polling import wait_until_async

#: loop turns ``advance`` and ``settle`` give woken tasks (no real I/O is involved)
_TURNS = 50


class FakeClock:
    """:class:`edgecache.clock.Clock` on a hand-driven timeline."""

    def __init__(self, *, wall: float = 1_800_000_000.0, monotonic: float = 1_000.0) -> None:
        self._wall_offset = wall - monotonic
        self._now = monotonic
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self._now + self._wall_offset

    def monotonic(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        await future

    async def wait(self, event: asyncio.Event, seconds: float | None) -> bool:
        if event.is_set():
            return True
        waiter = asyncio.ensure_future(event.wait())
        waits: set[asyncio.Future[Any]] = {waiter}
        timer = None if seconds is None else asyncio.ensure_future(self.sleep(seconds))
        if timer is not None:
            waits.add(timer)
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in waits:
                pending.cancel()
        return event.is_set()

    @property
    def sleepers(self) -> int:
        """How many sleeps are waiting for time to pass (cancelled ones not counted)."""
        return sum(1 for _, _, future in self._sleepers if not future.done())

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking each sleeper whose deadline is passed, in order.

        The loop settles first, so a task created just before starts (and sleeps
        from) the time it was created at, not the time moved to.
        """
        await settle()
        target = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not future.done():
                future.set_result(None)
            await settle()
        self._now = target
        await settle()


async def settle() -> None:
    """Let the event loop run everything that is ready (no waiting on real time)."""
    for _ in range(_TURNS):
        await asyncio.sleep(0)


async def until(predicate: Callable[[], bool], *, within: float = 5.0, what: str = "") -> None:
    """Yield to the loop until ``predicate`` holds: for work that hops to a thread.

    ``settle`` runs what is ready on the loop; a step done in ``asyncio.to_thread``
    (a diskcache or file write) finishes in real time, so a test waits for it here.
    Fake time does not move meanwhile; ``within`` real seconds bound a hang.
    """
    await wait_until_async(predicate, what or repr(predicate), within, interval=0.0)
