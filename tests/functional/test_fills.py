"""Misses: single flight, streaming while filling, integrity, faults (docs/behaviour.md)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from edgecache.api import images as images_api
from edgecache.core.cache import ImageCache
from lab.units import MiB
from tests.functional import WAIT, Edge, eventually, file_path, read_body, sha512, start_edgecache
from tests.support.clock import FakeClock
from tests.support.faultyglance import Fault, FaultyGlance


@pytest.fixture
async def edge(aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path) -> Edge:
    return await start_edgecache(aiohttp_client, tmp_path / "cache", (faulty_glance.url,))


async def test_concurrent_cold_requests_share_one_upstream_fetch(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    fg = faulty_glance
    data = os.urandom(4 * MiB + 123)
    meta = fg.add_image(
        data, fault=Fault(trickle_chunk=256 * 1024, trickle_delay=0.03)
    )
    image_id = meta["id"]

    results = await asyncio.gather(*(edge.fetch(file_path(image_id)) for _ in range(20)))

    assert fg.count("GET", file_path(image_id)) == 1
    for got in results:
        assert got.status == 200
        assert got.error is None
        assert got.content_length == len(data)
        assert sha512(got.body) == meta["os_hash_value"]
    scraped = await edge.scrape()
    requests = "edgecache_image_requests_total"
    assert scraped[(requests, frozenset({("result", "miss")}))] == 1
    assert scraped[(requests, frozenset({("result", "coalesced")}))] == 19
    assert scraped[(requests, frozenset({("result", "error")}))] == 0

    await edge.settled()
    assert edge.data_files() == {image_id: len(data)}
    assert edge.data_bytes(image_id) == data
    assert edge.sample("edgecache_cache_size_bytes") == len(data)
    assert edge.sample("edgecache_cache_images") == 1

    hit = await edge.fetch(file_path(image_id))
    assert hit.status == 200
    assert hit.error is None
    assert hit.body == data
    assert hit.headers["Content-Type"] == "application/octet-stream"
    assert hit.headers["Content-Length"] == str(len(data))
    assert hit.headers["Content-MD5"] == meta["checksum"]
    assert hit.headers["x-openstack-request-id"].startswith("req-")
    assert fg.count("GET", file_path(image_id)) == 1
    assert edge.requests("hit") == 1
    # counted once the sender thread's slice is back on the loop: the client may be done first
    await eventually(
        lambda: edge.sample("edgecache_served_bytes_total", source="cache") == len(data),
        WAIT, "the hit's bytes counted")
    assert edge.sample("edgecache_served_bytes_total", source="upstream") == 20 * len(data)
    assert edge.sample("edgecache_upstream_fetched_bytes_total") == len(data)


async def test_miss_headers_are_glances(edge: Edge, faulty_glance: FaultyGlance) -> None:
    data = os.urandom(MiB)
    meta = faulty_glance.add_image(data)

    got = await edge.fetch(file_path(meta["id"]), headers={"X-OpenStack-Request-ID": "abc-1"})

    assert got.status == 200
    assert got.body == data
    assert got.headers["Content-Type"] == "application/octet-stream"
    assert got.headers["Content-Length"] == str(len(data))
    assert got.headers["Content-MD5"] == meta["checksum"]
    assert got.headers["x-openstack-request-id"] == "req-abc-1"


async def test_wrong_hash_aborts_every_caller_and_commits_nothing(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path
) -> None:
    """...and the image cools down: no refetch of the same bad bytes until it is over."""
    fg = faulty_glance
    clock = FakeClock()
    edge = await start_edgecache(aiohttp_client, tmp_path / "cache", (fg.url,), clock=clock,
                                 failure_cooldown=30.0)
    data = os.urandom(3 * MiB)
    meta = fg.add_image(
        data, fault=Fault(wrong_hash=True, trickle_chunk=256 * 1024, trickle_delay=0.02)
    )
    image_id = meta["id"]

    results = await asyncio.gather(*(edge.fetch(file_path(image_id)) for _ in range(5)))

    assert fg.count("GET", file_path(image_id)) == 1
    for got in results:
        assert got.status == 200
        assert got.content_length == len(data)
        assert got.broken, f"a response ended cleanly ({got.error!r})"
        assert len(got.body) < len(data)
    await edge.settled()
    assert edge.incomplete_files() == []
    assert edge.data_files() == {}
    assert not edge.cache.is_committed(image_id)
    assert edge.sample("edgecache_integrity_failures_total") == 1
    assert edge.requests("error") == 5
    assert edge.sample("edgecache_cache_size_bytes") == 0

    fg.set_fault(image_id, None)
    await clock.advance(29.9)
    cooling = await edge.fetch(file_path(image_id))
    assert cooling.status == 503
    assert cooling.headers["Retry-After"] == "1"
    assert image_id in cooling.body.decode()
    assert fg.count("GET", file_path(image_id)) == 1
    assert edge.requests("error") == 6

    await clock.advance(0.1)
    again = await edge.fetch(file_path(image_id))
    assert again.status == 200
    assert again.error is None
    assert sha512(again.body) == meta["os_hash_value"]
    assert fg.count("GET", file_path(image_id)) == 2
    await edge.settled()
    assert edge.data_files() == {image_id: len(data)}


async def test_md5_is_verified_when_there_is_no_os_hash(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    data = os.urandom(MiB)
    wrong_md5 = hashlib.md5(b"other bytes", usedforsecurity=False).hexdigest()
    meta = faulty_glance.add_image(data, os_hash_algo=None, os_hash_value=None, checksum=wrong_md5)

    got = await edge.fetch(file_path(meta["id"]))

    assert got.status == 200
    assert got.broken
    assert len(got.body) < len(data)
    await edge.settled()
    assert edge.data_files() == {}
    assert edge.sample("edgecache_integrity_failures_total") == 1


async def test_image_without_hashes_is_checked_by_size(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    data = os.urandom(MiB)
    meta = faulty_glance.add_image(data, os_hash_algo=None, os_hash_value=None, checksum=None)

    got = await edge.fetch(file_path(meta["id"]))

    assert got.status == 200
    assert got.error is None
    assert got.body == data
    assert "Content-MD5" not in got.headers
    await edge.settled()
    assert edge.data_files() == {meta["id"]: len(data)}


@pytest.mark.parametrize("close_delimited", [False, True], ids=["content-length", "close"])
async def test_body_cut_midway_aborts_callers_and_commits_nothing(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path,
    close_delimited: bool,
) -> None:
    fg = faulty_glance
    # one resume (and its short backoff) shows the rule; five only take longer
    edge = await start_edgecache(aiohttp_client, tmp_path / "cache", (fg.url,),
                                 max_resume_attempts=1)
    data = os.urandom(4 * MiB)
    half = len(data) // 2
    meta = fg.add_image(
        data,
        fault=Fault(
            cut_after=half,
            no_content_length=close_delimited,
            trickle_chunk=256 * 1024,
            trickle_delay=0.02,
        ),
    )
    image_id = meta["id"]

    callers = [asyncio.create_task(edge.fetch(file_path(image_id))) for _ in range(3)]
    await eventually(lambda: fg.count("GET", file_path(image_id)) == 1
                     and fg.probes(file_path(image_id)) >= 1, WAIT,
                     "upstream GET and the joiners' download check")
    # Whatever a resume attempt asks for from now on, upstream cannot give it:
    # the fill must fail rather than commit.
    fg.stub("GET", file_path(image_id), status=500, json_body={"error": "gone"})
    results = await asyncio.gather(*callers)

    for got in results:
        assert got.status == 200
        assert got.content_length == len(data)
        assert got.broken, f"a response ended cleanly ({got.error!r})"
        assert len(got.body) <= half
    await edge.settled()
    assert edge.incomplete_files() == []
    assert edge.data_files() == {}
    assert edge.sample("edgecache_integrity_failures_total") + sum(
        edge.sample("edgecache_upstream_errors_total", reason=reason)
        for reason in ("body", "status", "connect", "timeout", "size")
    ) >= 1

    fg.clear_stubs()
    fg.set_fault(image_id, None)
    again = await edge.fetch(file_path(image_id))
    assert again.status == 200
    assert again.body == data
    await edge.settled()
    assert edge.data_files() == {image_id: len(data)}


async def test_body_cut_once_is_resumed_with_a_range(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    """A connection lost mid-body resumes with Range: bytes=N-, invisibly."""
    fg = faulty_glance
    data = os.urandom(4 * MiB)
    meta = fg.add_image(data, fault=Fault(cut_after=len(data) // 2, times=1))
    image_id = meta["id"]

    got = await edge.fetch(file_path(image_id))

    assert got.status == 200
    assert got.error is None, f"the cut reached the caller: {got.error!r}"
    assert got.body == data
    file_gets = [r for r in fg.requests if r.method == "GET" and r.path == file_path(image_id)]
    assert len(file_gets) == 2
    assert file_gets[1].range is not None
    assert file_gets[1].range.startswith("bytes=")
    assert file_gets[1].range.endswith("-")
    await edge.settled()
    assert edge.data_files() == {image_id: len(data)}


async def test_first_bytes_arrive_long_before_upstream_finishes(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    data = os.urandom(2 * MiB)
    chunk = 64 * 1024
    pieces = len(data) // chunk
    meta = faulty_glance.add_image(
        data, fault=Fault(trickle_chunk=chunk, trickle_delay=2.0 / pieces)
    )

    got = await edge.fetch(file_path(meta["id"]))

    assert got.status == 200
    assert got.error is None
    assert sha512(got.body) == meta["os_hash_value"]
    assert got.first_byte is not None
    assert got.elapsed > 1.5
    assert got.first_byte < 0.5
    assert got.first_byte < got.elapsed / 4


async def test_last_byte_is_withheld_until_the_image_is_verified(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path
) -> None:
    fg = faulty_glance
    edge = await start_edgecache(aiohttp_client, tmp_path / "cache", (fg.url,),
                                 max_resume_attempts=1)
    data = os.urandom(MiB + 7)
    size = len(data)
    meta = fg.add_image(data, fault=Fault(stall_after=size - 1))
    image_id = meta["id"]

    started = time.monotonic()
    async with asyncio.timeout(WAIT), edge.client.get(file_path(image_id)) as resp:
        assert resp.status == 200
        assert resp.content_length == size
        received = bytearray()
        while len(received) < size - 1:
            received += await resp.content.readany()
        assert bytes(received) == data[: size - 1]
        # Upstream has sent all but the last byte and hangs: the fill cannot be
        # verified, so nothing more may reach the caller.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                received += await resp.content.readany()
        fill = edge.cache.running_fill(image_id)
        assert fill is not None and not fill.verified
        assert edge.data_files() == {}

        # Upstream goes away: the response must break, not end.
        await fg.close()
        rest, error, _ = await read_body(resp, started)
    assert len(received) + len(rest) == size - 1
    assert isinstance(error, (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError))
    await edge.settled()
    assert edge.data_files() == {}


async def test_stalled_fill_is_abandoned_after_stall_time(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path
) -> None:
    """No progress for stall_time (on the cache's clock): abandoned; a moment less: kept."""
    fg = faulty_glance
    clock = FakeClock()
    edge = await start_edgecache(aiohttp_client, tmp_path / "cache", (fg.url,), clock=clock,
                                 stall_time=60.0)
    data = os.urandom(4 * MiB)
    meta = fg.add_image(data, fault=Fault(stall_after=MiB))
    image_id = meta["id"]

    fetches = [asyncio.ensure_future(edge.fetch(file_path(image_id))) for _ in range(3)]
    await eventually(
        lambda: (fill := edge.cache.running_fill(image_id)) is not None
        and fill.written >= MiB,
        what="the fill to reach the stall",
    )
    await clock.advance(59.0)
    assert edge.cache.running_fill(image_id) is not None, "abandoned before stall_time"
    assert not any(fetch.done() for fetch in fetches)

    await clock.advance(1.5)
    results = await asyncio.gather(*fetches)

    for got in results:
        assert got.status == 200
        assert got.broken, f"a response ended cleanly ({got.error!r})"
        assert len(got.body) <= MiB
    await edge.settled(within=3.0)
    assert edge.incomplete_files() == []
    assert edge.data_files() == {}
    assert edge.cache.fill_progress(image_id) is None
    assert edge.sample("edgecache_fills_in_progress") == 0


async def test_caller_that_disconnects_does_not_cancel_the_fill(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    fg = faulty_glance
    data = os.urandom(4 * MiB)
    meta = fg.add_image(data, fault=Fault(trickle_chunk=256 * 1024, trickle_delay=0.03))
    image_id = meta["id"]

    # The caller that started the fill reads a little and hangs up; another keeps reading.
    quitter = await edge.client.get(file_path(image_id))
    assert quitter.status == 200
    await asyncio.wait_for(quitter.content.readany(), WAIT)
    stayer = asyncio.create_task(edge.fetch(file_path(image_id)))
    await eventually(lambda: edge.requests("coalesced") == 1, WAIT, "second caller joined")
    quitter.close()

    stayed = await stayer
    assert stayed.status == 200
    assert stayed.error is None
    assert stayed.body == data
    await edge.settled()
    assert edge.data_files() == {image_id: len(data)}

    hit = await edge.fetch(file_path(image_id))
    assert hit.body == data
    assert edge.requests("hit") == 1
    assert fg.count("GET", file_path(image_id)) == 1


async def test_a_caller_whose_fill_ends_before_it_reads_gets_the_committed_copy(
    edge: Edge, faulty_glance: FaultyGlance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A joiner that opens the fill only once it has ended and closed its file is a hit."""
    fg = faulty_glance
    data = os.urandom(2 * MiB + 5)
    meta = fg.add_image(data, fault=Fault(trickle_chunk=256 * 1024, trickle_delay=0.02))
    image_id = meta["id"]
    fill_for = ImageCache.fill_for

    async def join_late(self: ImageCache, *args: Any, **kwargs: Any) -> Any:
        joined = await fill_for(self, *args, **kwargs)
        if joined is not None and not joined[1]:  # a joiner: let the fill end first
            await self.wait_fill(joined[0])
        return joined

    monkeypatch.setattr(ImageCache, "fill_for", join_late)
    starter = asyncio.create_task(edge.fetch(file_path(image_id)))
    await eventually(lambda: edge.fill_tasks_running(), WAIT, "the fill to start")
    joiner = await edge.fetch(file_path(image_id))
    started = await starter

    for got in (started, joiner):
        assert (got.status, got.error, got.body == data) == (200, None, True)
    assert fg.count("GET", file_path(image_id)) == 1
    assert edge.requests("error") == 0


async def test_a_caller_authorized_while_a_fill_commits_is_a_hit_not_a_second_fetch(
    edge: Edge, faulty_glance: FaultyGlance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found no copy and no fill, but by the time it acts the image is committed."""
    fg = faulty_glance
    data = os.urandom(MiB + 3)
    meta = fg.add_image(data)
    image_id = meta["id"]
    gather, committed = images_api._gather, asyncio.Event()
    held: list[bool] = []

    async def gather_then_wait(*args: Any, **kwargs: Any) -> Any:
        facts = await gather(*args, **kwargs)
        if not held:  # the first caller decides now and acts once the other has committed
            held.append(True)
            await committed.wait()
        return facts

    monkeypatch.setattr(images_api, "_gather", gather_then_wait)
    late = asyncio.create_task(edge.fetch(file_path(image_id)))
    await eventually(lambda: bool(held), WAIT, "the first caller to decide")
    first = await edge.fetch(file_path(image_id))
    await edge.settled()
    committed.set()
    second = await late

    for got in (first, second):
        assert (got.status, got.error, got.body == data) == (200, None, True)
    assert fg.count("GET", file_path(image_id)) == 1
    assert (edge.requests("miss"), edge.requests("hit")) == (1, 1)


async def test_fill_outlives_its_only_caller(edge: Edge, faulty_glance: FaultyGlance) -> None:
    fg = faulty_glance
    data = os.urandom(3 * MiB)
    meta = fg.add_image(data, fault=Fault(trickle_chunk=256 * 1024, trickle_delay=0.03))
    image_id = meta["id"]

    resp = await edge.client.get(file_path(image_id))
    assert resp.status == 200
    await asyncio.wait_for(resp.content.readany(), WAIT)
    resp.close()

    await edge.settled()
    assert edge.data_files() == {image_id: len(data)}
    assert edge.data_bytes(image_id) == data
    hit = await edge.fetch(file_path(image_id))
    assert hit.status == 200
    assert hit.body == data
    assert edge.requests("hit") == 1
    assert fg.count("GET", file_path(image_id)) == 1


async def test_close_delimited_upstream_body_is_cached_and_verified(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    fg = faulty_glance
    data = os.urandom(3 * MiB + 5)
    meta = fg.add_image(data, fault=Fault(no_content_length=True))
    image_id = meta["id"]

    got = await edge.fetch(file_path(image_id))

    assert got.status == 200
    assert got.error is None
    assert got.content_length == len(data)
    assert sha512(got.body) == meta["os_hash_value"]
    await edge.settled()
    assert edge.data_files() == {image_id: len(data)}
    hit = await edge.fetch(file_path(image_id))
    assert hit.body == data
    assert fg.count("GET", file_path(image_id)) == 1
    assert edge.requests("hit") == 1


async def test_zero_byte_image_is_served_and_committed(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    fg = faulty_glance
    meta = fg.add_image(b"")
    image_id = meta["id"]
    assert meta["size"] == 0

    got = await edge.fetch(file_path(image_id))

    assert got.status == 200
    assert got.error is None
    assert got.body == b""
    assert got.headers["Content-Length"] == "0"
    assert got.headers["Content-MD5"] == meta["checksum"]
    await edge.settled()
    assert edge.data_files() == {image_id: 0}
    hit = await edge.fetch(file_path(image_id))
    assert hit.status == 200
    assert hit.headers["Content-Length"] == "0"
    assert hit.body == b""
    assert edge.requests("hit") == 1
    assert fg.count("GET", file_path(image_id)) == 1


@pytest.mark.parametrize("how", ["delete", "clear"])
async def test_an_operator_removing_an_image_stops_its_fill(
    edge: Edge, faulty_glance: FaultyGlance, how: str
) -> None:
    """``DELETE /v2/cache/{id}`` (or a clear) during a fill: the fill stops and nothing is
    committed, so the image cannot come back, unaccounted, after the operator removed it."""
    fg = faulty_glance
    data = os.urandom(4 * MiB)
    image_id = fg.add_image(data, fault=Fault(trickle_chunk=128 * 1024, trickle_delay=0.02))["id"]
    caller = asyncio.ensure_future(edge.fetch(file_path(image_id)))
    await eventually(lambda: (fill := edge.cache.running_fill(image_id)) is not None
                     and fill.inspected.done() and fill.written > 0, WAIT,
                     "the fill to pass its format check (the caller's headers go out)")

    if how == "delete":
        answer = await edge.client.delete(f"/v2/cache/{image_id}")
    else:
        answer = await edge.client.delete("/v2/cache")
    assert answer.status == 204

    got = await caller
    assert got.broken, "the fill was stopped: its caller is cut, never served short"
    await edge.settled()
    assert not edge.cache.is_committed(image_id)
    assert edge.data_files() == {}
    assert edge.incomplete_files() == []
