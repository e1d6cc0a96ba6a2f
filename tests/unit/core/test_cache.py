"""ImageCache on its own: a real disk store in tmp_path, an in-memory source, a fake clock.

Fills run for real (their writer and hasher threads included); time moves only
when a test advances the clock, so stall and cool-down rules are checked at
their boundaries without sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from edgecache.core.cache import ImageCache
from edgecache.core.diskstore import DiskStore
from edgecache.core.views import Copy, FillState
from edgecache.errors import (
    ChecksumMismatch,
    FillCoolingDown,
    FillStalled,
    NoSpace,
    UpstreamRefused,
)
from edgecache.metrics import Metrics
from edgecache.model import Entry, ImageBody, ImageMeta
from lab.units import KiB
from tests.support.clock import FakeClock


def record(image_id: str, data: bytes, **changes: Any) -> ImageMeta:
    meta = ImageMeta(
        id=image_id,
        status="active",
        size=len(data),
        checksum=hashlib.md5(data).hexdigest(),
        os_hash_algo="sha512",
        os_hash_value=hashlib.sha512(data).hexdigest(),
        updated_at="2026-01-01T00:00:00Z",
    )
    return replace(meta, **changes)


class MemoryBody:
    """An image body from memory; ``hold`` keeps it from ending until set (a stall)."""

    def __init__(self, data: bytes, start: int, hold: asyncio.Event | None) -> None:
        self._data = data
        self.start = start
        self.content_length: int | None = len(data) - start
        self._hold = hold

    async def chunks(self) -> AsyncIterator[bytes]:
        half = len(self._data) // 2
        yield self._data[self.start:half]
        if self._hold is not None:
            await self._hold.wait()
        yield self._data[max(half, self.start):]

    def close(self) -> None:
        pass


@dataclass
class MemorySource:
    """What upstream serves, by image id, with the faults a test asks for."""

    images: dict[str, bytes] = field(default_factory=dict)
    refuse: int | None = None
    hold: asyncio.Event | None = None
    opened: list[str] = field(default_factory=list)

    async def open_image(
        self, image_id: str, headers: Mapping[str, str], *, offset: int = 0,
        meta: ImageMeta | None = None,
    ) -> ImageBody:
        self.opened.append(image_id)
        if self.refuse is not None:
            raise UpstreamRefused(self.refuse, b"no", {})
        return MemoryBody(self.images[image_id], offset, self.hold)


@dataclass
class Setup:
    cache: ImageCache
    source: MemorySource
    clock: FakeClock
    metrics: Metrics

    def count(self, name: str) -> float:
        return self.metrics.registry.get_sample_value(name) or 0.0


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    clock = FakeClock()
    source = MemorySource()
    metrics = Metrics()
    cache = ImageCache(
        DiskStore(tmp_path / "cache"), source, max_size=64 * KiB, stall_time=60.0,
        failure_cooldown=30.0, metrics=metrics, clock=clock,
    )
    await cache.start()
    yield Setup(cache, source, clock, metrics)
    await cache.stop()


async def fetched(setup: Setup, image_id: str, data: bytes) -> ImageMeta:
    """Fill ``data`` as image ``image_id`` and wait for its commit."""
    setup.source.images[image_id] = data
    meta = record(image_id, data)
    joined = await setup.cache.fill_for(meta, {})
    assert joined is not None
    assert await setup.cache.wait_fill(joined[0])
    return meta


async def read_hit(cache: ImageCache, meta: ImageMeta) -> bytes:
    hit = await cache.open_hit(meta)
    assert hit is not None
    try:
        return os.pread(hit.fd, (meta.size or 0) + 1, 0)
    finally:
        os.close(hit.fd)


async def test_a_fill_commits_and_then_hits(setup: Setup) -> None:
    data = os.urandom(10 * KiB)
    meta = await fetched(setup, "a", data)

    assert setup.cache.copy_of(meta) is Copy.SAME
    assert await read_hit(setup.cache, meta) == data
    entry = setup.cache.entry("a")
    assert entry is not None and entry.hits == 1 and entry.size == len(data)
    usage = setup.cache.usage()
    assert (usage.size, usage.images, usage.reserved, usage.fills) == (len(data), 1, 0, 0)
    assert setup.source.opened == ["a"]


async def test_concurrent_fill_requests_share_one_fill(setup: Setup) -> None:
    data = os.urandom(8 * KiB)
    setup.source.images["a"] = data
    setup.source.hold = asyncio.Event()
    meta = record("a", data)

    first = await setup.cache.fill_for(meta, {})
    second = await setup.cache.fill_for(meta, {})
    assert first is not None and second is not None
    assert first[0] is second[0] and (first[1], second[1]) == (True, False)
    assert setup.cache.fill_state(meta) is FillState.RUNNING
    assert setup.cache.usage().reserved == len(data)

    setup.source.hold.set()
    assert await setup.cache.wait_fill(first[0])
    assert setup.source.opened == ["a"]
    assert setup.cache.usage().reserved == 0


async def test_callers_arriving_while_the_partial_is_created_join_its_fill(
    setup: Setup,
) -> None:
    """The partial file is created in a thread; the loop serves others meanwhile."""
    data = os.urandom(8 * KiB)
    setup.source.images["a"] = data
    setup.source.hold = asyncio.Event()
    meta = record("a", data)

    joined = await asyncio.gather(*(setup.cache.fill_for(meta, {}) for _ in range(5)))
    fills = {id(j[0]) for j in joined if j is not None}
    assert len(fills) == 1
    assert sorted(j[1] for j in joined if j is not None) == [False] * 4 + [True]
    assert len(list((setup.cache.directory / "incomplete").iterdir())) == 1
    setup.source.hold.set()
    assert joined[0] is not None and await setup.cache.wait_fill(joined[0][0])


async def test_a_purge_while_the_partial_is_created_stops_that_fill(setup: Setup) -> None:
    """Else the image would be committed after the operator removed it."""
    data = os.urandom(8 * KiB)
    setup.source.images["a"] = data
    meta = record("a", data)

    starting = asyncio.create_task(setup.cache.fill_for(meta, {}))
    await asyncio.sleep(0)  # it has asked a disk thread for the partial
    assert await setup.cache.purge("a")
    joined = await starting
    assert joined is not None
    assert not await setup.cache.wait_fill(joined[0])
    assert not setup.cache.holds("a")
    assert setup.cache.usage().reserved == 0


async def test_a_changed_record_is_never_served_from_the_old_copy(setup: Setup) -> None:
    meta = await fetched(setup, "a", os.urandom(4 * KiB))
    changed = replace(meta, os_hash_value="0" * 128)

    assert setup.cache.copy_of(changed) is Copy.CHANGED
    assert await setup.cache.open_hit(changed) is None
    assert setup.cache.committed(changed) is None  # and it is evicted
    assert not setup.cache.is_committed("a")


async def test_a_fill_of_other_bytes_is_neither_joined_nor_replaced(setup: Setup) -> None:
    data = os.urandom(4 * KiB)
    setup.source.images["a"] = data
    setup.source.hold = asyncio.Event()
    meta = record("a", data)
    started = await setup.cache.fill_for(meta, {})
    assert started is not None
    other = replace(meta, os_hash_value="f" * 128)

    assert setup.cache.fill_state(other) is FillState.OTHER
    assert await setup.cache.fill_for(other, {}) is None
    assert setup.cache.fill_in_progress(other) is None
    setup.source.hold.set()
    await setup.cache.wait_fill(started[0])


async def test_admission_evicts_least_recently_used_but_never_pinned(setup: Setup) -> None:
    old = await fetched(setup, "old", os.urandom(24 * KiB))
    pinned = await fetched(setup, "pinned", os.urandom(24 * KiB))
    await setup.cache.pin("pinned")
    await read_hit(setup.cache, old)  # old is now the most recently used, but pinned can't go

    await fetched(setup, "new", os.urandom(30 * KiB))

    assert not setup.cache.is_committed("old")
    assert setup.cache.is_committed("pinned") and setup.cache.is_committed("new")
    assert setup.count("edgecache_cache_evictions_total") == 1
    assert setup.cache.usage().pinned == pinned.size
    assert not setup.cache.can_admit(48 * KiB)  # only the unpinned 30 KiB could go
    assert await setup.cache.fill_for(record("huge", os.urandom(65 * KiB)), {}) is None


async def test_pins_must_fit_within_max_size(setup: Setup) -> None:
    await fetched(setup, "a", os.urandom(40 * KiB))
    await setup.cache.pin("a")

    with pytest.raises(NoSpace):
        setup.cache.check_pin_room("b", 20 * KiB, promised=5 * KiB)
    setup.cache.check_pin_room("b", 20 * KiB, promised=4 * KiB)  # exactly 64 KiB: fits
    unpinned = await setup.cache.pin("a", pinned=False)
    assert unpinned is not None and not unpinned.pinned
    assert await setup.cache.pin("missing") is None


async def test_wrong_bytes_cool_the_image_down_until_the_cooldown_ends(setup: Setup) -> None:
    data = os.urandom(8 * KiB)
    setup.source.images["a"] = os.urandom(8 * KiB)  # not what the record's hash says
    meta = record("a", data)
    joined = await setup.cache.fill_for(meta, {})
    assert joined is not None
    assert not await setup.cache.wait_fill(joined[0])
    assert isinstance(joined[0].error, ChecksumMismatch)
    assert setup.count("edgecache_integrity_failures_total") == 1

    await setup.clock.advance(29.9)
    cooling = setup.cache.cooldown(meta)
    assert cooling is not None and cooling.retry_after(setup.clock.monotonic()) == \
        pytest.approx(0.1)
    with pytest.raises(FillCoolingDown):
        await setup.cache.fill_for(meta, {})
    # a record of other bytes (the image was fixed upstream) is not cooled down
    assert setup.cache.cooldown(replace(meta, os_hash_value="e" * 128)) is None

    await setup.clock.advance(0.1)
    assert setup.cache.cooldown(meta) is None
    setup.source.images["a"] = data
    again = await setup.cache.fill_for(meta, {})
    assert again is not None and again[1]
    assert await setup.cache.wait_fill(again[0])
    assert setup.source.opened == ["a", "a"]


async def test_one_callers_refusal_cools_nothing_down(setup: Setup) -> None:
    data = os.urandom(4 * KiB)
    setup.source.images["a"] = data
    setup.source.refuse = 403
    meta = record("a", data)
    joined = await setup.cache.fill_for(meta, {})
    assert joined is not None
    assert not await setup.cache.wait_fill(joined[0])

    assert isinstance(joined[0].error, UpstreamRefused)
    assert setup.cache.cooldown(meta) is None
    setup.source.refuse = None
    assert await setup.cache.fill_for(meta, {}) is not None


async def test_a_fill_without_progress_is_abandoned_after_stall_time(setup: Setup) -> None:
    data = os.urandom(8 * KiB)
    setup.source.images["a"] = data
    setup.source.hold = asyncio.Event()  # half the body arrives, then nothing
    meta = record("a", data)
    joined = await setup.cache.fill_for(meta, {})
    assert joined is not None
    fill = joined[0]
    await fill.wait_readable(0)

    await setup.clock.advance(59.0)
    assert setup.cache.fill_state(meta) is FillState.RUNNING
    await setup.clock.advance(16.0)  # the housekeeping pass after the 60 s mark

    assert not await setup.cache.wait_fill(fill)
    assert isinstance(fill.error, FillStalled)
    assert setup.cache.fill_state(meta) is FillState.NONE
    assert setup.cache.cooldown(meta) is None, "a silent upstream is not wrong bytes"
    assert setup.cache.usage().reserved == 0


async def test_the_read_model_hands_out_copies(setup: Setup) -> None:
    await fetched(setup, "a", os.urandom(4 * KiB))
    listed = setup.cache.entries()
    listed[0].pinned = True
    listed[0].extra["x"] = 1

    entry = setup.cache.entry("a")
    assert entry is not None and not entry.pinned and "x" not in entry.extra


async def test_verification_is_recorded_only_for_the_entry_that_was_checked(
    setup: Setup
) -> None:
    meta = await fetched(setup, "a", os.urandom(4 * KiB))
    checked = setup.cache.entry("a")
    assert checked is not None
    assert await setup.cache.mark_verified(checked, 123.0)
    entry = setup.cache.entry("a")
    assert entry is not None and entry.extra["verified_at"] == 123.0

    await setup.cache.evict("a")
    await fetched(setup, "a", os.urandom(4 * KiB))  # replaced by another commit meanwhile
    await setup.clock.advance(1.0)
    assert not await setup.cache.mark_verified(checked, 456.0)
    assert not await setup.cache.discard_corrupt(checked, "stale verdict")
    assert setup.cache.is_committed("a")
    assert setup.cache.copy_of(meta) is Copy.CHANGED


async def test_a_corrupt_entry_is_evicted_and_counted(setup: Setup) -> None:
    await fetched(setup, "a", os.urandom(4 * KiB))
    checked = setup.cache.entry("a")
    assert checked is not None

    assert await setup.cache.discard_corrupt(checked, "sha512 differs")
    assert not setup.cache.is_committed("a")
    assert setup.count("edgecache_integrity_failures_total") == 1


async def test_a_smaller_max_size_prunes_down_to_it(setup: Setup) -> None:
    await fetched(setup, "a", os.urandom(20 * KiB))
    await fetched(setup, "b", os.urandom(20 * KiB))

    await setup.cache.resize(30 * KiB)

    assert [e.image_id for e in setup.cache.entries()] == ["b"]
    assert setup.cache.usage().max_size == 30 * KiB
    assert await setup.cache.prune() == []


async def test_cancelling_a_prefetch_leaves_live_fills_alone(setup: Setup) -> None:
    data = os.urandom(8 * KiB)
    setup.source.images["a"] = data
    setup.source.hold = asyncio.Event()
    live = await setup.cache.fill_for(record("a", data), {})
    assert live is not None

    assert not setup.cache.cancel_prefetch("a")  # no throttle: a live caller's fill
    assert not setup.cache.cancel_prefetch("unknown")
    setup.source.hold.set()
    assert await setup.cache.wait_fill(live[0])


class HeldCommits(DiskStore):
    """A disk store whose commits wait until the test lets them through."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.entered = threading.Event()
        self.release = threading.Event()

    def commit(self, partial: Path, fd: int, entry: Entry) -> None:
        self.entered.set()
        self.release.wait(10)
        super().commit(partial, fd, entry)


class Unthrottled:
    """A prefetch's throttle that paces nothing (only its presence matters here)."""

    async def take(self, amount: int) -> None:
        return None

    def lift(self) -> None:
        return None


async def test_a_verified_fill_is_never_cancelled_mid_commit(tmp_path: Path) -> None:
    store = HeldCommits(tmp_path / "cache")
    data = os.urandom(8 * KiB)
    source = MemorySource(images={"a": data})
    cache = ImageCache(store, source, max_size=64 * KiB, clock=FakeClock())
    await cache.start()
    try:
        joined = await cache.fill_for(record("a", data), {}, throttle=Unthrottled())
        assert joined is not None
        await asyncio.to_thread(store.entered.wait, 10)
        assert joined[0].verified

        assert not cache.cancel_prefetch("a"), "only its commit is left"
        store.release.set()
        assert await cache.wait_fill(joined[0])
        assert cache.is_committed("a")
    finally:
        store.release.set()
        await cache.stop()


async def test_a_prefetch_cancelled_right_after_it_started_is_not_listed_for_ever(
    setup: Setup,
) -> None:
    """The operator unqueues an image the moment its fill was registered (before the
    fill's task ran a step): the fill ends, its reservation goes, it is not listed."""
    data = os.urandom(8 * KiB)
    setup.source.images["a"] = data
    joined = await setup.cache.fill_for(record("a", data), {}, throttle=Unthrottled())
    assert joined is not None
    assert setup.cache.cancel_prefetch("a")
    assert not await setup.cache.wait_fill(joined[0])
    for _ in range(5):
        await asyncio.sleep(0)
    assert setup.cache.fills() == []
    assert setup.cache.usage().reserved == 0
