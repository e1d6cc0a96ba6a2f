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
from edgecache.core.views import VERIFIED_AT, verified_at
from edgecache.model import Entry, ImageSource
from edgecache.ops.ratelimit import TokenBucket
from edgecache.ops.scrub import CHUNK, IDLE, Scrubber
from tests.support.clock import FakeClock, settle, until

DAY = 86400.0


class Disk:
    """A cache directory seeded with committed images, then opened by an ImageCache."""

    def __init__(self, root: Path) -> None:
        self.store = DiskStore(root)
        self.store.open()

    def commit(self, image_id: str, data: bytes, *, verified: float) -> Entry:
        entry = Entry(
            image_id, len(data), os_hash_algo="sha512",
            os_hash_value=hashlib.sha512(data).hexdigest(), committed_at=verified,
            last_access=verified,
        )
        partial, fd = self.store.create_partial(image_id)
        try:
            os.pwrite(fd, data, 0)
            self.store.commit(partial, fd, entry)
        finally:
            os.close(fd)
        return entry

    async def cache(self, clock: FakeClock) -> ImageCache:
        self.store.close()
        cache = ImageCache(self.store, cast(ImageSource, None), max_size=1 << 30, clock=clock)
        await cache.start()
        await settle()  # its housekeeping is asleep on the clock from here on
        return cache


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    disk = Disk(tmp_path)
    yield disk
    disk.store.close()


async def test_the_entry_verified_longest_ago_is_due_first(disk: Disk) -> None:
    clock = FakeClock()
    now = clock.time()
    empty = await disk.cache(clock)
    assert Scrubber(empty, rate=1, interval=DAY, clock=clock).next_due() == (None, IDLE), \
        "nothing cached: look again after IDLE"
    await empty.stop()

    disk.store.open()
    disk.commit("recent", b"r", verified=now - DAY / 2)
    recent_only = await disk.cache(clock)
    assert Scrubber(recent_only, rate=1, interval=DAY, clock=clock).next_due() == \
        (None, IDLE), "due in half a day: sleep at most IDLE"
    await recent_only.stop()

    disk.store.open()
    oldest = disk.commit("oldest", b"o", verified=now - DAY - 1)
    newer = disk.commit("newer", b"n", verified=now - DAY)
    cache = await disk.cache(clock)
    try:
        scrubber = Scrubber(cache, rate=1, interval=DAY, clock=clock)
        assert scrubber.next_due() == (oldest, 0.0)
        assert await cache.mark_verified(oldest, now)
        assert scrubber.next_due() == (newer, 0.0), "exactly an interval ago is due"
    finally:
        await cache.stop()


async def test_a_short_interval_is_waited_exactly(disk: Disk) -> None:
    clock = FakeClock()
    disk.commit("img-1", b"x", verified=clock.time() - 10.0)
    cache = await disk.cache(clock)
    try:
        assert Scrubber(cache, rate=1, interval=30.0, clock=clock).next_due() == (None, 20.0)
    finally:
        await cache.stop()


async def test_the_loop_scrubs_an_entry_when_it_falls_due(disk: Disk) -> None:
    clock = FakeClock()
    interval = 3600.0
    due = clock.time() + 10
    disk.commit("img-1", os.urandom(1000), verified=due - interval)
    cache = await disk.cache(clock)
    scrubber = Scrubber(cache, rate=1 << 30, interval=interval, clock=clock)

    def scrubbed() -> bool:
        entry = cache.entry("img-1")
        return entry is not None and VERIFIED_AT in entry.extra

    await scrubber.start()
    try:
        await clock.advance(10 - 1 / 64)
        assert not scrubbed(), "not due yet"
        await clock.advance(2 / 64)
        await until(scrubbed, what="the scrub")
        entry = cache.entry("img-1")
        assert entry is not None and due <= verified_at(entry) <= clock.time()
        await until(lambda: clock.sleepers >= 1, what="the scrubber to sleep again")
        assert scrubber.next_due() == (None, min(interval, IDLE))
    finally:
        await scrubber.stop()
        await cache.stop()


async def test_a_scrub_is_paced_at_its_rate(disk: Disk) -> None:
    clock = FakeClock()
    data = os.urandom(3 * CHUNK)
    entry = disk.commit("img-1", data, verified=0.0)
    cache = await disk.cache(clock)
    try:
        scrubber = Scrubber(cache, rate=CHUNK, clock=clock)  # one chunk per second
        base = clock.sleepers  # the cache's own housekeeping sleeps too
        checking = asyncio.create_task(
            scrubber.check(entry, TokenBucket(CHUNK, burst=CHUNK, clock=clock))
        )
        started = clock.monotonic()
        for second in range(3):
            await until(lambda: clock.sleepers == base + 1,
                        what=f"chunk {second + 1} to be paced")
            await clock.advance(1 - 1 / 64)
            assert not checking.done(), f"{second + 1} chunks need {second + 1} s"
            await clock.advance(1 / 64)
        verdict = await checking
        assert verdict.result == "ok"
        assert clock.monotonic() == started + 3
    finally:
        await cache.stop()


async def test_a_corrupt_file_is_evicted(disk: Disk) -> None:
    clock = FakeClock()
    disk.commit("img-1", b"good bytes", verified=0.0)
    disk.store.data_path("img-1").write_bytes(b"bad! bytes")
    cache = await disk.cache(clock)
    try:
        verdict = await Scrubber(cache, rate=0, clock=clock).verify("img-1")
        assert verdict is not None and verdict.result == "corrupt"
        assert not cache.is_committed("img-1")
    finally:
        await cache.stop()
