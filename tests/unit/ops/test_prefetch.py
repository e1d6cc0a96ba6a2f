"""Prefetch retries and the demand yield, on a fake clock.

A real (unstarted) ImageCache and a real durable queue in a temporary directory;
Glance is a scripted metadata source. Queue writes hop to a thread, which
``until`` waits for; time moves only when the test says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from edgecache.core.cache import ImageCache
from edgecache.core.diskstore import DiskStore
from edgecache.errors import UpstreamError
from edgecache.model import ImageSource
from edgecache.ops.prefetch import (
    DEMAND_YIELD,
    MAX_ATTEMPTS,
    MAX_BACKOFF,
    Prefetcher,
    PrefetchQueue,
    _PacedFill,
)
from edgecache.ops.ratelimit import TokenBucket
from tests.support.clock import FakeClock, settle, until
from tests.support.metadata import ScriptedGlance, refusal

#: A step exact in binary, so stepping back and forth lands on a deadline exactly.
TICK = 1 / 64


@dataclass
class Setup:
    clock: FakeClock
    glance: ScriptedGlance
    cache: ImageCache
    prefetcher: Prefetcher

    def outcome(self, result: str) -> float:
        value = self.prefetcher.metrics.registry.get_sample_value(
            "edgecache_prefetch_total", {"result": result}
        )
        return value or 0.0

    def state(self, image_id: str) -> str | None:
        return next(
            (row["state"] for row in self.prefetcher.progress() if row["image_id"] == image_id),
            None,
        )


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    clock = FakeClock()
    glance = ScriptedGlance()
    cache = ImageCache(
        DiskStore(tmp_path / "cache"), cast(ImageSource, glance), max_size=1 << 30
    )
    prefetcher = Prefetcher(
        cache, glance, PrefetchQueue(tmp_path / "prefetch"), workers=1, clock=clock
    )
    await prefetcher.start()
    try:
        yield Setup(clock, glance, cache, prefetcher)
    finally:
        await prefetcher.stop()


async def test_transient_failures_back_off_then_give_up(setup: Setup) -> None:
    clock, glance, prefetcher = setup.clock, setup.glance, setup.prefetcher
    glance.answers["img-1"] = UpstreamError("Glance is down")
    assert await prefetcher.enqueue("img-1")
    await until(lambda: glance.count("img-1") == 1, what="the first attempt")
    await until(lambda: clock.sleepers == 1, what="the worker to wait for the retry")

    schedule = [min(MAX_BACKOFF, 2.0**attempt) for attempt in range(1, MAX_ATTEMPTS)]
    assert schedule == [2.0, 4.0, 8.0, 16.0]
    for attempt, delay in enumerate(schedule, start=2):
        assert setup.state("img-1") == "retrying"
        await clock.advance(delay - TICK)
        assert glance.count("img-1") == attempt - 1, f"attempt {attempt} came early"
        await clock.advance(TICK)  # exactly the pause since the last failure
        assert glance.count("img-1") == attempt, f"attempt {attempt} is not {delay} s later"

    await until(lambda: bool(prefetcher.failures), what="the prefetch to be given up")
    assert prefetcher.failures[-1]["image_id"] == "img-1"
    assert f"({MAX_ATTEMPTS} attempts)" in prefetcher.failures[-1]["error"]
    assert prefetcher.failures[-1]["at"] == clock.time()
    assert prefetcher.queued() == []
    assert setup.outcome("failed") == 1
    await clock.advance(10 * MAX_BACKOFF)
    assert glance.count("img-1") == MAX_ATTEMPTS, "nothing is tried after giving up"


async def test_a_refusal_gives_up_at_once(setup: Setup) -> None:
    setup.glance.answers["img-1"] = refusal(403)
    await setup.prefetcher.enqueue("img-1")
    await until(lambda: bool(setup.prefetcher.failures), what="the prefetch to be given up")
    assert setup.prefetcher.failures[-1]["error"] == "Glance answered 403"
    await setup.clock.advance(10 * MAX_BACKOFF)
    assert setup.glance.count("img-1") == 1


async def test_a_retrying_image_does_not_hold_up_the_next(setup: Setup) -> None:
    clock, glance, prefetcher = setup.clock, setup.glance, setup.prefetcher
    glance.answers["img-1"] = UpstreamError("Glance is down")
    glance.answers["img-2"] = refusal(404)
    await prefetcher.enqueue("img-1")
    await until(lambda: glance.count("img-1") == 1, what="the first attempt")
    await prefetcher.enqueue("img-2")
    await until(lambda: glance.count("img-2") == 1, what="the second image")
    await until(lambda: clock.sleepers == 1, what="the worker to wait for img-1's retry")
    assert glance.count("img-1") == 1, "no time passed: img-1 is still resting"
    await clock.advance(2.0)
    assert glance.count("img-1") == 2


async def test_removing_a_retrying_image_stops_its_retries(setup: Setup) -> None:
    setup.glance.answers["img-1"] = UpstreamError("Glance is down")
    await setup.prefetcher.enqueue("img-1")
    await until(lambda: setup.glance.count("img-1") == 1, what="the first attempt")
    assert await setup.prefetcher.remove("img-1")
    await setup.clock.advance(10 * MAX_BACKOFF)
    assert setup.glance.count("img-1") == 1
    assert list(setup.prefetcher.failures) == []


class Demand:
    """Live callers' fills as a prefetch sees them: how many, and when they are over."""

    def __init__(self, fills: int) -> None:
        self.fills = fills
        self._idle = asyncio.Event()

    @property
    def demand_fills(self) -> int:
        return self.fills

    async def demand_idle(self) -> None:
        await self._idle.wait()

    def end(self) -> None:
        self.fills = 0
        self._idle.set()


async def test_a_prefetch_reads_one_piece_per_demand_yield_while_callers_fill() -> None:
    clock = FakeClock()
    demand = Demand(fills=1)
    paced = _PacedFill(TokenBucket(0, clock=clock), demand, clock)
    piece = asyncio.create_task(paced.take(1 << 20))
    await clock.advance(DEMAND_YIELD - 0.001)
    assert not piece.done(), "yields to the live callers"
    await clock.advance(0.002)
    assert piece.done(), "one piece per DEMAND_YIELD keeps its connection alive"

    piece = asyncio.create_task(paced.take(1 << 20))
    await clock.advance(DEMAND_YIELD / 2)
    assert not piece.done()
    demand.end()
    await settle()
    assert piece.done(), "demand over: it goes on at once"
    assert clock.sleepers == 0


async def test_a_joined_prefetch_stops_yielding() -> None:
    clock = FakeClock()
    paced = _PacedFill(TokenBucket(1, clock=clock), Demand(fills=1), clock)
    piece = asyncio.create_task(paced.take(1 << 20))
    await clock.advance(DEMAND_YIELD / 2)
    paced.lift()
    await settle()
    assert piece.done(), "a live caller joined: neither the yield nor the cap applies"
    await paced.take(1 << 30)
