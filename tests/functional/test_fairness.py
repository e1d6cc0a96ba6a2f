"""Demand fills before prefetch fills, for upstream connections and bandwidth.

See docs/behaviour.md#prefetch.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from edgecache.ops.prefetch import DEMAND_YIELD
from lab.units import MiB
from tests.functional import WAIT, Edge, eventually, file_path, start_edgecache
from tests.support.faultyglance import Fault, FaultyGlance

#: every image here arrives at about 5 MiB/s (64 KiB every 12.5 ms)
SLOW = Fault(trickle_chunk=64 * 1024, trickle_delay=0.0125)


@pytest.fixture
async def edge(aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path) -> Edge:
    return await start_edgecache(aiohttp_client, tmp_path / "cache", (faulty_glance.url,))


async def _queue(edge: Edge, image_id: str) -> None:
    answer = await edge.fetch(f"/v2/cache/{image_id}", method="PUT")
    assert answer.status == 202, answer.body


async def test_a_demand_fill_starts_at_once_and_prefetches_make_way(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    fg = faulty_glance
    running = fg.add_image(os.urandom(24 * MiB), fault=SLOW)["id"]
    queued = fg.add_image(os.urandom(MiB), fault=SLOW)["id"]
    wanted = os.urandom(12 * MiB)
    demand = fg.add_image(wanted, fault=SLOW)["id"]

    await _queue(edge, running)
    await eventually(lambda: edge.cache.running_fill(running) is not None, WAIT,
                     "the prefetch to start")
    prefetch = edge.cache.running_fill(running)
    assert prefetch is not None
    await eventually(lambda: prefetch.written >= MiB, WAIT, "the prefetch to move")

    booting = asyncio.ensure_future(edge.fetch(file_path(demand)))
    await eventually(lambda: fg.count("GET", file_path(demand)) == 1, WAIT, "the demand GET")
    before, since = prefetch.written, time.monotonic()
    # The second worker is free, but must not start a prefetch while the demand runs.
    await _queue(edge, queued)

    got = await booting
    during = time.monotonic() - since

    assert got.status == 200
    assert got.body == wanted
    assert got.first_byte is not None and got.first_byte < 1.0
    assert fg.count("GET", file_path(queued)) == 0
    # At full speed the prefetch would have read as much as the demand (12 MiB);
    # yielding, it reads one piece (about 1 MiB at most) per DEMAND_YIELD seconds.
    most = 1.5 * MiB * (during / DEMAND_YIELD + 2)
    assert prefetch.written - before <= min(most, 9 * MiB), (prefetch.written - before, during)
    assert edge.cache.running_fill(running) is prefetch

    # Once the demand is served, prefetching carries on: the queued one starts.
    await eventually(lambda: fg.count("GET", file_path(queued)) == 1, WAIT, "the queued prefetch")


async def test_a_live_caller_joining_a_prefetch_is_not_slowed_by_other_prefetches(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    """The joined prefetch becomes a demand fill: it reads at full speed, others yield."""
    fg = faulty_glance
    first = os.urandom(8 * MiB)
    joined = fg.add_image(first, fault=SLOW)["id"]
    other = fg.add_image(os.urandom(24 * MiB), fault=SLOW)["id"]
    await _queue(edge, joined)
    await _queue(edge, other)
    await eventually(
        lambda: None not in (edge.cache.running_fill(joined), edge.cache.running_fill(other)),
        WAIT, "both prefetches",
    )
    assert edge.cache.demand_fills == 0

    got = await edge.fetch(file_path(joined))

    assert (got.status, got.body) == (200, first)
    assert fg.count("GET", file_path(joined)) == 1
    await eventually(lambda: edge.cache.demand_fills == 0, WAIT, "the joined fill to end")
