"""A full or failing cache disk never fails a caller (docs/behaviour.md#a-full-or-failing-disk).

The cache directory is a real, small tmpfs mounted for the test (the suite runs as
root, as CI does), so ENOSPC and a read-only directory are the kernel's own; an
EIO, which no disk gives on demand, comes through the cache's ``write`` seam.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from lab.units import KiB, MiB
from tests.functional import Edge, Fetched, eventually, file_path, sha512, start_edgecache
from tests.support.faultyglance import Fault, FaultyGlance, is_download_probe
from tests.support.tmpfs import fill_up, read_only, tmpfs

#: The tmpfs the cache lives on.
DISK = 8 * MiB


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A cache directory on its own tmpfs of DISK bytes, unmounted at the end.

    Tests ask for it before ``aiohttp_client``, so the app has stopped by then.
    """
    with tmpfs(tmp_path / "disk", DISK) as root:
        yield root


def _whole(got: Fetched, data: bytes) -> None:
    assert got.status == 200
    assert got.error is None, got.error
    assert len(got.body) == len(data)
    assert sha512(got.body) == sha512(data)


def _consistent(edge: Edge) -> None:
    """Nothing committed or reserved for the image, no partial left, no fill running."""
    usage = edge.cache.usage()
    assert usage.reserved == 0
    assert usage.fills == 0
    assert edge.incomplete_files() == []


async def test_a_disk_that_fills_up_mid_fill_still_gives_every_caller_the_image(
    small_disk: Path, aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance
) -> None:
    """ENOSPC half-way: the starter and both joiners each get the whole, verified image,
    relayed from upstream past where the disk stopped; nothing is committed."""
    edge = await start_edgecache(aiohttp_client, small_disk, (faulty_glance.url,))
    data = os.urandom(4 * MiB)
    meta = faulty_glance.add_image(
        data, fault=Fault(trickle_chunk=128 * KiB, trickle_delay=0.02)
    )
    image_id = meta["id"]

    callers = [asyncio.create_task(edge.fetch(file_path(image_id))) for _ in range(3)]
    await eventually(
        lambda: (p := edge.cache.fill_progress(image_id)) is not None and p.bytes_done >= MiB,
        what="a quarter of the image on disk",
    )
    filler = fill_up(small_disk)
    results = await asyncio.gather(*callers)

    for got in results:
        _whole(got, data)
    await edge.settled()
    _consistent(edge)
    assert edge.data_files() == {}
    assert edge.sample("edgecache_cache_disk_errors_total", op="write") == 1
    assert edge.requests("error") == 0
    # one fill, then each caller's own ranged read of the rest
    path = file_path(image_id)
    gets = [r for r in faulty_glance.requests if r.method == "GET" and r.path == path
            and not is_download_probe(r.range)]  # the joiners' download check reads no data
    assert len(gets) == 4
    assert [r.range for r in gets].count(None) == 1

    # The daemon keeps serving, and caches again once there is room.
    filler.unlink()
    await edge.cache.sample_disk()
    _whole(await edge.fetch(file_path(image_id)), data)
    await edge.settled()
    assert edge.data_files() == {image_id: len(data)}
    _whole(await edge.fetch(file_path(image_id)), data)
    assert edge.requests("hit") == 1


async def test_an_image_larger_than_the_free_space_passes_through(
    small_disk: Path, aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance
) -> None:
    """``max_size`` says 1 GiB, the disk holds 8 MiB: admission reads statvfs, so a 12 MiB
    image is not cached and its callers get Glance's bytes, verified by Glance's path."""
    edge = await start_edgecache(aiohttp_client, small_disk, (faulty_glance.url,),
                                 max_size=1 << 30)
    data = os.urandom(12 * MiB)
    image_id = faulty_glance.add_image(data)["id"]

    results = await asyncio.gather(*(edge.fetch(file_path(image_id)) for _ in range(3)))

    for got in results:
        _whole(got, data)
    await edge.settled()
    _consistent(edge)
    assert edge.data_files() == {}
    assert edge.sample("edgecache_cache_admissions_refused_total", reason="disk_space") == 3
    assert edge.sample("edgecache_cache_disk_errors_total", op="write") == 0
    assert faulty_glance.count("GET", file_path(image_id)) == 3
    assert edge.requests("error") == 0

    # An image that fits is still cached.
    small = os.urandom(MiB)
    small_id = faulty_glance.add_image(small)["id"]
    _whole(await edge.fetch(file_path(small_id)), small)
    await edge.settled()
    assert edge.data_files() == {small_id: len(small)}


async def test_admission_counts_the_fills_running_against_the_free_space(
    small_disk: Path, aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance
) -> None:
    """Two 5 MiB images each fit the 8 MiB disk, not both: while the first fills, the
    second passes through, and nothing runs the disk full."""
    edge = await start_edgecache(aiohttp_client, small_disk, (faulty_glance.url,))
    first, second = os.urandom(5 * MiB), os.urandom(5 * MiB)
    first_id = faulty_glance.add_image(
        first, fault=Fault(trickle_chunk=256 * KiB, trickle_delay=0.02)
    )["id"]
    second_id = faulty_glance.add_image(second)["id"]

    filling = asyncio.create_task(edge.fetch(file_path(first_id)))
    await eventually(lambda: edge.cache.fill_progress(first_id) is not None, what="a fill")
    _whole(await edge.fetch(file_path(second_id)), second)
    _whole(await filling, first)

    await edge.settled()
    assert edge.data_files() == {first_id: len(first)}
    assert edge.sample("edgecache_cache_admissions_refused_total", reason="disk_space") == 1
    assert edge.sample("edgecache_cache_disk_errors_total", op="write") == 0


async def test_a_read_only_cache_directory_passes_through_and_evicts_nothing(
    small_disk: Path, aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance
) -> None:
    """The cache directory turns read-only (a read-only bind mount over it): a miss is
    Glance's answer, 200 with its bytes, not a 500; the copy it would have evicted to
    make room stays, and is still a hit."""
    edge = await start_edgecache(aiohttp_client, small_disk, (faulty_glance.url,),
                                 max_size=3 * MiB)
    kept, new = os.urandom(2 * MiB), os.urandom(2 * MiB)
    kept_id = faulty_glance.add_image(kept)["id"]
    new_id = faulty_glance.add_image(new)["id"]
    _whole(await edge.fetch(file_path(kept_id)), kept)
    await edge.settled()
    assert edge.data_files() == {kept_id: len(kept)}

    with read_only(small_disk):
        results = await asyncio.gather(*(edge.fetch(file_path(new_id)) for _ in range(2)))
        for got in results:
            _whole(got, new)
        assert edge.sample("edgecache_cache_disk_errors_total", op="create") >= 1
        assert edge.cache.is_committed(kept_id)
        assert edge.data_files() == {kept_id: len(kept)}
        _whole(await edge.fetch(file_path(kept_id)), kept)
        assert edge.requests("hit") == 1
        assert edge.requests("error") == 0
        _consistent(edge)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EMFILE, errno.EACCES])
async def test_a_partial_that_cannot_be_created_passes_through_and_evicts_nothing(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path, code: int,
) -> None:
    """Out of inodes, out of descriptors, no permission: creating the partial fails, the
    miss is Glance's answer (not a 500) and the copy it would have evicted stays a hit."""
    edge = await start_edgecache(aiohttp_client, tmp_path / "cache", (faulty_glance.url,),
                                 max_size=3 * MiB)
    kept, new = os.urandom(2 * MiB), os.urandom(2 * MiB)
    kept_id = faulty_glance.add_image(kept)["id"]
    new_id = faulty_glance.add_image(new)["id"]
    _whole(await edge.fetch(file_path(kept_id)), kept)
    await edge.settled()

    def cannot_create(image_id: str) -> tuple[Path, int]:
        raise OSError(code, os.strerror(code))

    edge.cache._store.create_partial = cannot_create  # type: ignore[method-assign]
    _whole(await edge.fetch(file_path(new_id)), new)
    assert edge.sample("edgecache_cache_disk_errors_total", op="create") >= 1
    assert edge.data_files() == {kept_id: len(kept)}
    _whole(await edge.fetch(file_path(kept_id)), kept)
    assert edge.requests("hit") == 1
    assert edge.requests("error") == 0
    _consistent(edge)


async def test_an_eio_mid_fill_still_gives_every_caller_the_image(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path
) -> None:
    """The disk answers EIO from 1 MiB on: every caller, one joining after the failure
    too, gets the verified image; the cache holds nothing and no cool-down follows."""
    edge = await start_edgecache(aiohttp_client, tmp_path / "cache", (faulty_glance.url,))
    data = os.urandom(3 * MiB + 77)
    meta = faulty_glance.add_image(data, fault=Fault(trickle_chunk=64 * KiB, trickle_delay=0.01))
    image_id = meta["id"]
    failed = asyncio.Event()

    def write(fd: int, chunk: bytes | memoryview, offset: int) -> None:
        if offset + len(chunk) > MiB:
            failed.set()
            raise OSError(errno.EIO, "Input/output error")
        os.pwrite(fd, chunk, offset)

    edge.cache.write = write
    callers = [asyncio.create_task(edge.fetch(file_path(image_id))) for _ in range(2)]
    await asyncio.wait_for(failed.wait(), 10)
    callers.append(asyncio.create_task(edge.fetch(file_path(image_id))))
    for got in await asyncio.gather(*callers):
        _whole(got, data)
    await edge.settled()
    _consistent(edge)
    assert edge.data_files() == {}
    assert edge.sample("edgecache_cache_disk_errors_total", op="write") >= 1
    assert edge.sample("edgecache_integrity_failures_total") == 0
    assert edge.requests("error") == 0

    # The disk is fine again: no cool-down, the next request fills and commits.
    edge.cache.write = None
    _whole(await edge.fetch(file_path(image_id)), data)
    await edge.settled()
    assert edge.data_files() == {image_id: len(data)}


async def test_a_relay_of_wrong_bytes_is_cut_never_clean(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path
) -> None:
    """The disk fails before the flipped byte; the relayed rest is wrong: the response is
    cut before its last byte, as a fill of wrong bytes would be."""
    edge = await start_edgecache(aiohttp_client, tmp_path / "cache", (faulty_glance.url,))
    data = os.urandom(2 * MiB)
    image_id = faulty_glance.add_image(
        data, fault=Fault(wrong_hash=True, trickle_chunk=64 * KiB, trickle_delay=0.01)
    )["id"]

    def write(fd: int, chunk: bytes | memoryview, offset: int) -> None:
        if offset >= 256 * KiB:
            raise OSError(errno.EIO, "Input/output error")
        os.pwrite(fd, chunk, offset)

    edge.cache.write = write
    got = await edge.fetch(file_path(image_id))

    assert got.status == 200
    assert got.broken
    assert len(got.body) < len(data)
    await edge.settled()
    _consistent(edge)
    assert edge.data_files() == {}
    # it was the relay that was cut: the disk failed first, the rest was asked for
    assert edge.sample("edgecache_cache_disk_errors_total", op="write") == 1
    assert edge.sample("edgecache_integrity_failures_total") == 1  # the relay's, counted
    ranges = [r.range for r in faulty_glance.requests if r.path == file_path(image_id)]
    assert len(ranges) == 2
    assert ranges[0] is None
    assert ranges[1] is not None and int(ranges[1].removeprefix("bytes=").rstrip("-")) > 0


async def test_a_range_read_from_a_fill_whose_disk_fails_is_whole_and_verified(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path
) -> None:
    """A range served from a running fill (a lower tier resuming) when the disk fails at
    1 MiB: a 206 with exactly the range's bytes, its last one after the hash matched."""
    edge = await start_edgecache(aiohttp_client, tmp_path / "cache", (faulty_glance.url,))
    data = os.urandom(3 * MiB)
    image_id = faulty_glance.add_image(
        data, fault=Fault(trickle_chunk=64 * KiB, trickle_delay=0.01)
    )["id"]

    def write(fd: int, chunk: bytes | memoryview, offset: int) -> None:
        if offset + len(chunk) > MiB:
            raise OSError(errno.EIO, "Input/output error")
        os.pwrite(fd, chunk, offset)

    edge.cache.write = write
    whole = asyncio.create_task(edge.fetch(file_path(image_id)))
    await eventually(lambda: edge.cache.fill_progress(image_id) is not None, what="a fill")
    first, last = 100, 2 * MiB + 5
    ranged = await edge.fetch(file_path(image_id), headers={"Range": f"bytes={first}-{last}"})

    assert ranged.status == 206
    assert ranged.error is None, ranged.error
    assert ranged.body == data[first : last + 1]
    _whole(await whole, data)
    await edge.settled()
    _consistent(edge)
    assert edge.requests("error") == 0
    assert edge.sample("edgecache_cache_disk_errors_total", op="write") == 1
    # the fill's GET, then the whole's and the range's own reads from the disk's stop
    ranges = [r.range for r in faulty_glance.requests if r.path == file_path(image_id)]
    assert len(ranges) == 3 and ranges[0] is None
    assert ranges[1] == ranges[2] is not None
