"""The shared byte-rate cap, on a fake clock: its debt, its burst, and lifting a wait."""

from __future__ import annotations

import asyncio

import pytest

from edgecache.ops.ratelimit import TokenBucket
from tests.support.clock import FakeClock, settle


async def test_bucket_keeps_the_long_run_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, clock=clock)
    waited = 0.0
    for _ in range(10):  # 10 x 500 bytes at 1000 B/s: 5 s, whatever the chunking
        delay = bucket.debit(500)
        waited += delay
        await clock.advance(delay)
    assert waited == pytest.approx(5.0)


async def test_bucket_saves_at_most_its_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, clock=clock)  # burst: a quarter second's worth
    await clock.advance(60)  # idle for a minute
    assert bucket.debit(250) == 0.0
    assert bucket.debit(1000) == pytest.approx(1.0)
    assert TokenBucket(0).debit(1 << 30) == 0.0  # 0: unlimited


async def test_take_sleeps_off_its_debt_on_the_clock() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, clock=clock)
    taking = asyncio.create_task(bucket.take(1500))  # 1.5 s of debt
    await clock.advance(1.499)
    assert not taking.done(), "paced until the debt is paid"
    await clock.advance(0.002)
    assert taking.done()
    await taking


async def test_an_unlimited_bucket_never_waits() -> None:
    clock = FakeClock()
    taking = asyncio.create_task(TokenBucket(0, clock=clock).take(1 << 30))
    await settle()
    assert taking.done()
    assert clock.sleepers == 0


async def test_bucket_wait_ends_when_lifted() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1.0, clock=clock)  # one byte per second: a 60 s wait
    lifted = asyncio.Event()
    taking = asyncio.create_task(bucket.take(60, until=lifted))
    await clock.advance(30)
    assert not taking.done(), "half the debt is not paid off"
    lifted.set()
    await settle()
    assert taking.done(), "lifting ends the wait without time passing"
    await taking


async def test_an_unlifted_wait_ends_with_its_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1.0, clock=clock)
    taking = asyncio.create_task(bucket.take(60, until=asyncio.Event()))
    await clock.advance(59.999)
    assert not taking.done()
    await clock.advance(0.002)
    assert taking.done()
