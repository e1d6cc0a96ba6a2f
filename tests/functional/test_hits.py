"""Hits: ranges and LRU eviction within max_size.

See docs/behaviour.md#hits and docs/behaviour.md#eviction.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from edgecache.api import images as images_api
from edgecache.api import streaming
from edgecache.core.cache import DISK_THREADS
from lab.units import MiB
from tests.functional import Edge, eventually, file_path, read_body, sha512, start_edgecache
from tests.support.faultyglance import FaultyGlance


@pytest.fixture
async def edge(aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path) -> Edge:
    return await start_edgecache(aiohttp_client, tmp_path / "cache", (faulty_glance.url,))


@pytest.mark.parametrize(
    ("header", "start", "stop"),
    [
        ("bytes=100-199", 100, 200),
        ("bytes=0-0", 0, 1),
        ("bytes=-10", MiB + 3 - 10, MiB + 3),
        (f"bytes={MiB}-", MiB, MiB + 3),
        ("bytes=5-99999999", 5, MiB + 3),
    ],
)
async def test_single_range_on_a_hit(
    edge: Edge, faulty_glance: FaultyGlance, header: str, start: int, stop: int
) -> None:
    fg = faulty_glance
    data = os.urandom(MiB + 3)
    image_id = fg.add_image(data)["id"]
    assert (await edge.fetch(file_path(image_id))).body == data
    await edge.settled()

    got = await edge.fetch(file_path(image_id), headers={"Range": header})

    assert got.status == 206
    assert got.error is None
    assert got.body == data[start:stop]
    assert got.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{len(data)}"
    assert got.headers["Content-Length"] == str(stop - start)
    assert got.headers["Content-Type"] == "application/octet-stream"
    assert fg.count("GET", file_path(image_id)) == 1
    assert edge.requests("hit") == 1


async def test_bad_ranges_on_a_hit(edge: Edge, faulty_glance: FaultyGlance) -> None:
    fg = faulty_glance
    data = os.urandom(MiB)
    image_id = fg.add_image(data)["id"]
    assert (await edge.fetch(file_path(image_id))).body == data
    await edge.settled()

    multi = await edge.fetch(file_path(image_id), headers={"Range": "bytes=0-1,5-6"})
    assert multi.status == 400
    assert multi.body
    assert multi.headers.get("Content-Type")

    past_end = await edge.fetch(file_path(image_id), headers={"Range": f"bytes={len(data)}-"})
    assert past_end.status == 416
    assert past_end.headers["Content-Range"] == f"bytes */{len(data)}"

    backwards = await edge.fetch(file_path(image_id), headers={"Range": "bytes=9-3"})
    assert backwards.status == 416

    assert fg.count("GET", file_path(image_id)) == 1
    assert image_id in edge.data_files()


async def test_range_on_a_miss_goes_upstream_and_commits_nothing(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    fg = faulty_glance
    data = os.urandom(2 * MiB)
    image_id = fg.add_image(data)["id"]

    got = await edge.fetch(file_path(image_id), headers={"Range": "bytes=1000-1999"})

    assert got.status == 206
    assert got.error is None
    assert got.body == data[1000:2000]
    assert got.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    file_gets = [r for r in fg.requests if r.method == "GET" and r.path == file_path(image_id)]
    assert [r.range for r in file_gets] == ["bytes=1000-1999"]
    assert not edge.cache.fills()
    await edge.settled()
    assert edge.data_files() == {}
    assert edge.incomplete_files() == []

    full = await edge.fetch(file_path(image_id))
    assert full.body == data
    assert fg.count("GET", file_path(image_id)) == 2
    assert edge.requests("miss") == 2


async def test_lru_evicts_the_least_recently_used_image(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path
) -> None:
    fg = faulty_glance
    max_size = 7 * MiB
    edge = await start_edgecache(
        aiohttp_client, tmp_path / "cache", (fg.url,), max_size=max_size
    )
    images = {name: os.urandom(3 * MiB) for name in "ABC"}
    ids = {name: fg.add_image(data, name=name)["id"] for name, data in images.items()}

    async def get(name: str) -> None:
        got = await edge.fetch(file_path(ids[name]))
        assert got.status == 200
        assert got.body == images[name]
        await edge.settled()
        assert edge.sample("edgecache_cache_size_bytes") <= max_size
        assert sum(edge.data_files().values()) <= max_size

    await get("A")
    await get("B")
    await get("A")
    assert edge.requests("hit") == 1
    assert set(edge.data_files()) == {ids["A"], ids["B"]}

    await get("C")

    await eventually(lambda: ids["B"] not in edge.data_files(), what="B evicted")
    assert set(edge.data_files()) == {ids["A"], ids["C"]}
    assert not edge.cache.is_committed(ids["B"])
    assert edge.sample("edgecache_cache_evictions_total") == 1
    assert edge.sample("edgecache_cache_images") == 2
    assert edge.sample("edgecache_cache_size_bytes") == 6 * MiB
    assert edge.sample("edgecache_cache_max_size_bytes") == max_size
    assert fg.count("GET", file_path(ids["A"])) == 1

    # Bigger than the whole cache: served straight from upstream, nothing evicted.
    big = os.urandom(8 * MiB)
    big_meta = fg.add_image(big, name="big")
    got = await edge.fetch(file_path(big_meta["id"]))
    assert got.status == 200
    assert got.error is None
    assert sha512(got.body) == big_meta["os_hash_value"]
    await edge.settled()
    assert set(edge.data_files()) == {ids["A"], ids["C"]}
    assert edge.incomplete_files() == []
    assert edge.sample("edgecache_cache_size_bytes") == 6 * MiB
    assert edge.sample("edgecache_cache_evictions_total") == 1

    again = await edge.fetch(file_path(big_meta["id"]))
    assert again.body == big
    assert fg.count("GET", file_path(big_meta["id"])) == 2


async def test_head_answers_headers_only(edge: Edge, faulty_glance: FaultyGlance) -> None:
    fg = faulty_glance
    data = os.urandom(MiB)
    meta = fg.add_image(data)
    image_id = meta["id"]

    cold = await edge.fetch(file_path(image_id), method="HEAD")
    assert cold.status == 200
    assert cold.body == b""
    assert cold.headers["Content-Length"] == str(len(data))
    assert cold.headers["Content-MD5"] == meta["checksum"]
    assert fg.count("GET", file_path(image_id)) == 0
    assert edge.data_files() == {}

    assert (await edge.fetch(file_path(image_id))).body == data
    await edge.settled()
    warm = await edge.fetch(file_path(image_id), method="HEAD")
    assert warm.status == 200
    assert warm.body == b""
    assert warm.headers["Content-Length"] == str(len(data))
    assert warm.headers["Content-Type"] == "application/octet-stream"
    assert fg.count("GET", file_path(image_id)) == 1


def blocked_connections(edge: Edge) -> int:
    """Open server-side connections whose socket takes no more bytes (a client not reading)."""
    runner = edge.client.server.runner
    assert runner is not None and runner.server is not None
    blocked = 0
    for handler in runner.server.connections:
        transport = handler.transport
        if transport is None or transport.is_closing():
            continue
        _, writable, _ = select.select([], [transport.get_extra_info("socket").fileno()], [], 0)
        blocked += not writable
    return blocked


async def test_eviction_does_not_break_a_transfer_in_progress(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    """An image being served may be evicted; the transfer still completes."""
    fg = faulty_glance
    data = os.urandom(32 * MiB)
    image_id = fg.add_image(data)["id"]
    assert (await edge.fetch(file_path(image_id))).body == data
    await edge.settled()

    async with edge.client.get(file_path(image_id)) as resp:
        assert resp.status == 200
        head = await resp.content.readany()
        # The client stops reading: socket buffers fill and the hit stalls mid-file.
        await eventually(lambda: blocked_connections(edge) == 1, what="the hit to stall")
        assert edge.sample("edgecache_served_bytes_total", source="cache") < len(data)

        deleted = await edge.fetch(f"/v2/images/{image_id}", method="DELETE")
        assert deleted.status == 204
        await eventually(lambda: image_id not in edge.data_files(), what="data/<id> removed")

        rest = await asyncio.wait_for(resp.content.read(), 10)
    assert head + rest == data


async def test_committed_images_survive_a_restart_partials_do_not(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path
) -> None:
    """After a restart committed images are served without refetching (durability)."""
    fg = faulty_glance
    root = tmp_path / "cache"
    data = os.urandom(2 * MiB)
    image_id = fg.add_image(data)["id"]
    first = await start_edgecache(aiohttp_client, root, (fg.url,))
    assert (await first.fetch(file_path(image_id))).body == data
    await first.settled()
    await first.client.close()  # stops the app: cache.stop(), index closed
    # What a crash leaves behind: a partial fill and a data file nobody indexed.
    (root / "incomplete" / f"{image_id}.deadbeef").write_bytes(data[:1000])
    (root / "data" / "00000000-0000-0000-0000-000000000000").write_bytes(b"orphan")

    second = await start_edgecache(aiohttp_client, root, (fg.url,))

    assert second.incomplete_files() == []
    assert second.data_files() == {image_id: len(data)}
    assert second.sample("edgecache_cache_images") == 1
    assert second.sample("edgecache_cache_size_bytes") == len(data)
    hit = await second.fetch(file_path(image_id))
    assert hit.status == 200
    assert hit.body == data
    assert second.requests("hit") == 1
    assert fg.count("GET", file_path(image_id)) == 1


async def test_a_truncated_cached_file_is_refetched_and_verified(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    """The committed file lost bytes behind our back: never served short, fetched again."""
    fg = faulty_glance
    data = os.urandom(2 * MiB)
    meta = fg.add_image(data)
    image_id = meta["id"]
    assert (await edge.fetch(file_path(image_id))).body == data
    await edge.settled()
    os.truncate(edge.root / "data" / image_id, MiB)

    again = await edge.fetch(file_path(image_id))

    assert (again.status, again.error) == (200, None)
    assert sha512(again.body) == meta["os_hash_value"]
    assert fg.count("GET", file_path(image_id)) == 2
    assert edge.sample("edgecache_integrity_failures_total") == 1
    await edge.settled()
    assert edge.data_files() == {image_id: len(data)}


async def test_a_file_truncated_while_it_is_served_cuts_the_response_at_once(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    """A short sendfile ends the response with a cut, not a client waiting for bytes that
    will never come; the damaged entry goes, and the next request refetches."""
    fg = faulty_glance
    data = os.urandom(32 * MiB)
    meta = fg.add_image(data)
    image_id = meta["id"]
    assert (await edge.fetch(file_path(image_id))).body == data
    await edge.settled()

    started = time.monotonic()
    async with edge.client.get(file_path(image_id)) as resp:
        assert resp.status == 200
        first = await resp.content.readany()
        os.truncate(edge.root / "data" / image_id, 4 * MiB)
        rest, error, _ = await read_body(resp, started)
    assert time.monotonic() - started < 5.0
    assert isinstance(error, (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError))
    assert len(first) + len(rest) < len(data)
    await eventually(lambda: not edge.cache.is_committed(image_id), what="the eviction")
    assert edge.sample("edgecache_integrity_failures_total") == 1

    again = await edge.fetch(file_path(image_id))
    assert (again.status, again.error) == (200, None)
    assert sha512(again.body) == meta["os_hash_value"]
    assert fg.count("GET", file_path(image_id)) == 2


async def test_an_upper_case_id_is_the_same_image(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    """Glance finds a UUID in either case; so do the cache, the purge and the cache API."""
    fg = faulty_glance
    data = os.urandom(MiB)
    image_id = fg.add_image(data)["id"]
    assert (await edge.fetch(file_path(image_id))).body == data
    await edge.settled()

    upper = await edge.fetch(file_path(image_id.upper()))

    assert (upper.status, upper.body) == (200, data)
    assert fg.count("GET", file_path(image_id)) == 1, "a hit, not a second download"
    assert edge.requests("hit") == 1
    deleted = await edge.client.delete(f"/v2/cache/{image_id.upper()}")
    assert deleted.status == 204
    assert not edge.cache.is_committed(image_id)


async def test_a_64_character_request_id_reaches_glance_within_its_limit(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    """Glance refuses ids over 64 characters: edgecache forwards the caller's id as sent
    (Glance prefixes ``req-`` itself), and answers with the prefixed form, as Glance does."""
    fg = faulty_glance
    data = os.urandom(MiB)
    image_id = fg.add_image(data)["id"]
    caller_id = "x" * 64

    got = await edge.fetch(file_path(image_id), headers={"X-OpenStack-Request-ID": caller_id})

    assert (got.status, got.body) == (200, data)
    assert got.headers["x-openstack-request-id"] == f"req-{caller_id}"
    sent = [r.headers.get("x-openstack-request-id") for r in fg.requests
            if r.path.startswith(f"/v2/images/{image_id}")]
    assert sent and all(value == caller_id for value in sent), sent


async def test_a_client_that_hangs_up_after_the_last_byte_is_logged_as_served(
    edge: Edge, faulty_glance: FaultyGlance, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nova closes its connection as soon as it has Content-Length bytes: that is a 200.

    The descriptor's close is queued behind busy disk threads here; had the
    handler waited for it, the hang-up would cancel a finished response (499).
    """
    data = os.urandom(MiB)
    image_id = faulty_glance.add_image(data)["id"]
    assert (await edge.fetch(file_path(image_id))).body == data
    await edge.settled()

    release = threading.Event()
    real_send_fd = images_api.send_fd  # type: ignore[attr-defined]

    async def send_then_busy_the_disk(*args: Any, **kwargs: Any) -> None:
        await real_send_fd(*args, **kwargs)
        for _ in range(DISK_THREADS):
            edge.cache._disk.submit(release.wait, 10)

    monkeypatch.setattr(images_api, "send_fd", send_then_busy_the_disk)
    caplog.set_level(logging.INFO, logger="edgecache.access")
    server = edge.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(f"GET {file_path(image_id)} HTTP/1.1\r\nHost: edge\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert await reader.readexactly(len(data)) == data
    finally:
        writer.close()
    try:
        await eventually(
            lambda: any(file_path(image_id) in r.getMessage() for r in caplog.records
                        if r.name == "edgecache.access"),
            what="the access line",
        )
    finally:
        release.set()
    (line,) = [r.getMessage() for r in caplog.records
               if r.name == "edgecache.access" and file_path(image_id) in r.getMessage()]
    assert " status=200 " in line, line


async def test_a_client_that_stops_reading_holds_no_sender_thread(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With one sender thread, a stalled client must not stop anyone else's download."""
    monkeypatch.setattr(streaming, "SENDER_THREADS", 1)
    edge = await start_edgecache(aiohttp_client, tmp_path / "cache", (faulty_glance.url,))
    data = os.urandom(32 * MiB)
    image_id = faulty_glance.add_image(data)["id"]
    assert (await edge.fetch(file_path(image_id))).body == data
    await edge.settled()

    async with edge.client.get(file_path(image_id)) as stalled:
        assert stalled.status == 200
        await stalled.content.readany()
        await eventually(lambda: blocked_connections(edge) == 1, what="the hit to stall")

        other = await edge.fetch(file_path(image_id), within=10)
        assert other.status == 200 and other.body == data

        rest = await asyncio.wait_for(stalled.content.read(), 10)
        assert len(rest) > 0
