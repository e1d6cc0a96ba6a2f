"""The scrubber's due times, idle sleeps and pacing, on a fake clock.

Files are real (a DiskStore in a temporary directory) and hashed in a thread,
which ``until`` waits for; time moves only when the test says so.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from edgecache.core.cache import ImageCache
from edgecache.core.diskstore import DiskStore
from edgecache.model import Entry, ImageSource
from edgecache.ops.ratelimit import TokenBucket
from edgecache.ops.scrub import CHUNK, IDLE, VERIFIED_AT, Scrubber, verified_at
from tests.support.clock import FakeClock, until

DAY = 86400.0


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[ImageCache]:
    store = DiskStore(tmp_path)
    store.open()
    yield ImageCache(store, cast(ImageSource, None), max_size=1 << 30)
    store.close()


def _commit(cache: ImageCache, image_id: str, data: bytes, *, verified: float) -> Entry:
    cache.store.data_path(image_id).write_bytes(data)
    entry = Entry(
        image_id, len(data), os_hash_algo="sha512",
        os_hash_value=hashlib.sha512(data).hexdigest(), committed_at=verified,
    )
    cache.index.add(entry)
    return entry


def test_the_entry_verified_longest_ago_is_due_first(cache: ImageCache) -> None:
    clock = FakeClock()
    now = clock.time()
    scrubber = Scrubber(cache, rate=1, interval=DAY, clock=clock)
    assert scrubber.next_due() == (None, IDLE), "nothing cached: look again after IDLE"

    _commit(cache, "recent", b"r", verified=now - DAY / 2)
    assert scrubber.next_due() == (None, IDLE), "due in half a day: sleep at most IDLE"
    oldest = _commit(cache, "oldest", b"o", verified=now - DAY - 1)
    newer = _commit(cache, "newer", b"n", verified=now - DAY)
    assert scrubber.next_due() == (oldest, 0.0)
    oldest.extra[VERIFIED_AT] = now
    assert scrubber.next_due() == (newer, 0.0), "exactly an interval ago is due"


def test_a_short_interval_is_waited_exactly(cache: ImageCache) -> None:
    clock = FakeClock()
    scrubber = Scrubber(cache, rate=1, interval=30.0, clock=clock)
    _commit(cache, "img-1", b"x", verified=clock.time() - 10.0)
    assert scrubber.next_due() == (None, 20.0)


async def test_the_loop_scrubs_an_entry_when_it_falls_due(cache: ImageCache) -> None:
    clock = FakeClock()
    interval = 3600.0
    due = clock.time() + 10
    entry = _commit(cache, "img-1", os.urandom(1000), verified=due - interval)
    scrubber = Scrubber(cache, rate=1 << 30, interval=interval, clock=clock)
    await scrubber.start()
    try:
        await clock.advance(10 - 1 / 64)
        assert VERIFIED_AT not in entry.extra, "not due yet"
        await clock.advance(2 / 64)
        await until(lambda: VERIFIED_AT in entry.extra, what="the scrub")
        assert due <= verified_at(entry) <= clock.time()
        assert "img-1" in cache.index
        await until(lambda: clock.sleepers == 1, what="the scrubber to sleep again")
        assert scrubber.next_due() == (None, min(interval, IDLE))
    finally:
        await scrubber.stop()


async def test_a_scrub_is_paced_at_its_rate(cache: ImageCache) -> None:
    clock = FakeClock()
    data = os.urandom(3 * CHUNK)
    entry = _commit(cache, "img-1", data, verified=0.0)
    scrubber = Scrubber(cache, rate=CHUNK, clock=clock)  # one chunk per second
    checking = asyncio.create_task(
        scrubber.check(entry, TokenBucket(CHUNK, burst=CHUNK, clock=clock))
    )
    for second in range(3):
        await until(lambda: clock.sleepers == 1, what=f"chunk {second + 1} to be paced")
        await clock.advance(1 - 1 / 64)
        assert not checking.done(), f"{second + 1} chunks need {second + 1} s"
        await clock.advance(1 / 64)
    verdict = await checking
    assert verdict.result == "ok"
    assert clock.monotonic() == FakeClock().monotonic() + 3


async def test_a_corrupt_file_is_evicted(cache: ImageCache) -> None:
    clock = FakeClock()
    entry = _commit(cache, "img-1", b"good bytes", verified=0.0)
    cache.store.data_path("img-1").write_bytes(b"bad! bytes")
    verdict = await Scrubber(cache, rate=0, clock=clock).verify("img-1")
    assert verdict is not None and verdict.result == "corrupt"
    assert entry.image_id not in cache.index
