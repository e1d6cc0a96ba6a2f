"""How a fill treats what upstream answers to a resume, and to a first request.

See docs/behaviour.md#upstream-faults.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from lab.units import MiB
from tests.functional import WAIT, Edge, eventually, file_path, start_edgecache
from tests.support.faultyglance import Fault, FaultyGlance


@pytest.fixture
async def edge(aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path) -> Edge:
    return await start_edgecache(aiohttp_client, tmp_path / "cache", (faulty_glance.url,))


async def test_a_resume_answered_with_the_whole_image_still_yields_the_exact_bytes(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    """A server that ignores Range (200 from byte 0): the fill drops what it already has."""
    fg = faulty_glance
    data = os.urandom(4 * MiB + 77)
    meta = fg.add_image(
        data,
        fault=Fault(cut_after=len(data) // 2, trickle_chunk=256 * 1024, trickle_delay=0.01,
                    times=1),
    )
    image_id = meta["id"]
    fetching = asyncio.ensure_future(edge.fetch(file_path(image_id)))
    await eventually(lambda: fg.count("GET", file_path(image_id)) == 1, WAIT, "first GET")
    fg.set_fault(image_id, Fault(ignore_range=True))

    got = await fetching

    assert got.status == 200
    assert got.error is None, f"the cut reached the caller: {got.error!r}"
    assert got.body == data
    file_gets = [r for r in fg.requests if r.method == "GET" and r.path == file_path(image_id)]
    assert len(file_gets) == 2
    assert file_gets[1].range is not None
    await edge.settled()
    assert edge.data_files() == {image_id: len(data)}
    assert edge.data_bytes(image_id) == data


async def test_a_fill_never_starts_from_a_206(edge: Edge, faulty_glance: FaultyGlance) -> None:
    fg = faulty_glance
    data = os.urandom(MiB)
    meta = fg.add_image(data)
    image_id = meta["id"]
    fg.stub(
        "GET",
        file_path(image_id),
        status=206,
        body=data[: 1024],
        headers={"Content-Range": f"bytes 0-1023/{len(data)}",
                 "Content-Type": "application/octet-stream"},
    )

    got = await edge.fetch(file_path(image_id))

    assert got.status == 503
    assert data[:1024] not in got.body
    await edge.settled()
    assert edge.data_files() == {}
    assert edge.incomplete_files() == []

    fg.clear_stubs()
    again = await edge.fetch(file_path(image_id))
    assert (again.status, again.body) == (200, data)


async def test_a_range_of_an_image_being_fetched_is_read_from_its_fill(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    """What a lower tier's resume asks for: no second upstream GET, the exact bytes."""
    fg = faulty_glance
    data = os.urandom(4 * MiB)
    meta = fg.add_image(data, fault=Fault(trickle_chunk=256 * 1024, trickle_delay=0.02))
    image_id = meta["id"]
    whole = asyncio.ensure_future(edge.fetch(file_path(image_id)))
    await eventually(lambda: fg.count("GET", file_path(image_id)) == 1, WAIT, "the fill")

    start = MiB + 5
    part, tail = await asyncio.gather(
        edge.fetch(file_path(image_id), headers={"Range": f"bytes={start}-"}),
        edge.fetch(file_path(image_id), headers={"Range": "bytes=-100"}),
    )

    assert part.status == 206
    assert part.headers["Content-Range"] == f"bytes {start}-{len(data) - 1}/{len(data)}"
    assert part.body == data[start:]
    assert (tail.status, tail.body) == (206, data[-100:])
    assert (await whole).body == data
    assert fg.count("GET", file_path(image_id)) == 1
    assert edge.requests("coalesced") == 2


async def test_a_range_of_a_fill_with_wrong_bytes_is_cut_never_clean(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    """The range ends before the image does, over the byte that is wrong: it must not end
    cleanly before the hash is known, and the hash condemns it."""
    fg = faulty_glance
    data = os.urandom(2 * MiB)
    image_id = fg.add_image(
        data, fault=Fault(wrong_hash=True, trickle_chunk=128 * 1024, trickle_delay=0.02)
    )["id"]
    whole = asyncio.ensure_future(edge.fetch(file_path(image_id)))
    await eventually(lambda: fg.count("GET", file_path(image_id)) == 1, WAIT, "the fill")

    flipped = len(data) // 2  # where the fault flips a byte
    ranged = await edge.fetch(file_path(image_id), headers={"Range": f"bytes=0-{flipped}"})

    assert ranged.status == 206
    assert ranged.broken, f"a range over wrong bytes ended cleanly ({ranged.error!r})"
    assert len(ranged.body) <= flipped
    assert (await whole).broken
    assert fg.count("GET", file_path(image_id)) == 1
