"""Glance's ``download_image`` decides every download; each caller gets its own answer.

docs/behaviour.md#authorization ("Who may download", "Each caller gets its own
answer"). FaultyGlance's ``downloaders`` stand in for a policy that lets some
callers see an image but not download it; tests/keystone/test_download_policy.py
shows the same against a real Glance and its policy file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from edgecache.daemon.app import make_app
from lab.units import MiB
from tests.functional import (
    WAIT,
    Edge,
    Fetched,
    eventually,
    file_path,
    settings,
    start_edgecache,
)
from tests.support.clock import FakeClock
from tests.support.faultyglance import Fault, FaultyGlance

#: about 5 MiB/s: a fill of a few MiB is still running while other callers come
SLOW = Fault(trickle_chunk=64 * 1024, trickle_delay=0.0125)
TTL = 60.0
A = {"X-Auth-Token": "tok-a"}
B = {"X-Auth-Token": "tok-b"}
C = {"X-Auth-Token": "tok-c"}


@pytest.fixture
async def edge(aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path) -> Edge:
    return await start_edgecache(aiohttp_client, tmp_path / "cache", (faulty_glance.url,),
                                 auth_cache_ttl=TTL)


def assert_refused(got: Fetched, data: bytes, *, head: bool = False) -> None:
    """Glance's own 403 (status and body), and not a byte of the image."""
    assert got.status == 403, (got.status, got.body[:200])
    assert head or b"download_image" in got.body
    assert data[:64] not in got.body
    assert got.headers.get("Content-Type") != "application/octet-stream"


async def test_a_caller_glance_will_not_let_download_is_refused_on_every_path(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    fg = faulty_glance
    data = os.urandom(4 * MiB)
    image_id = fg.add_image(data, readers={"tok-a", "tok-b"}, downloaders={"tok-a"},
                            fault=SLOW)["id"]
    path = file_path(image_id)
    first = asyncio.create_task(edge.fetch(path, headers=A))
    await eventually(lambda: edge.cache.running_fill(image_id) is not None, WAIT, "A's fill")

    # While A's fill runs: a join, a HEAD and a range of the fill.
    assert_refused(await edge.fetch(path, headers=B), data)
    assert_refused(await edge.fetch(path, headers=B, method="HEAD"), data, head=True)
    assert_refused(await edge.fetch(path, headers={**B, "Range": "bytes=0-99"}), data)
    assert edge.cache.running_fill(image_id) is not None, "all of it while the fill ran"

    got = await first
    assert (got.status, got.body) == (200, data)
    await edge.settled()
    assert image_id in edge.data_files()

    # A hit, a HEAD of the hit, a range of the hit.
    assert_refused(await edge.fetch(path, headers=B), data)
    assert_refused(await edge.fetch(path, headers=B, method="HEAD"), data, head=True)
    assert_refused(await edge.fetch(path, headers={**B, "Range": "bytes=10-20"}), data)
    assert (await edge.fetch(path, headers=A)).body == data
    assert fg.count("GET", path) == 1, "B's refusals fetched nothing"


@pytest.mark.parametrize("byte_range", ["bytes=999999999-", "bytes=abc", "bytes=5-1"])
async def test_a_caller_refused_the_download_gets_the_refusal_for_a_bad_range_too(
    edge: Edge, faulty_glance: FaultyGlance, byte_range: str
) -> None:
    """A Range edgecache itself would refuse (400, 416) is still Glance's 403 first, as
    Glance asks its policy before it reads the Range; one who may download gets ours."""
    data = os.urandom(64 * 1024)
    image_id = faulty_glance.add_image(data, readers={"tok-a", "tok-b"},
                                       downloaders={"tok-a"})["id"]
    path = file_path(image_id)
    assert (await edge.fetch(path, headers=A)).body == data
    await edge.settled()

    assert_refused(await edge.fetch(path, headers={**B, "Range": byte_range}), data)
    allowed = await edge.fetch(path, headers={**A, "Range": byte_range})
    assert allowed.status in (400, 416), allowed.status


async def test_the_verdict_is_reused_per_credentials_for_the_ttl_refusals_never(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path
) -> None:
    fg = faulty_glance
    clock = FakeClock()
    edge = await start_edgecache(aiohttp_client, tmp_path / "cache", (fg.url,),
                                 auth_cache_ttl=TTL, clock=clock)
    data = os.urandom(64 * 1024)
    image_id = fg.add_image(data, downloaders={"tok-a", "tok-b"})["id"]
    path = file_path(image_id)

    assert (await edge.fetch(path, headers=A)).body == data
    await edge.settled()
    assert fg.probes(path) == 0, "the starter's own data GET was the question"
    assert (await edge.fetch(path, headers=A)).body == data
    assert fg.probes(path) == 0, "and its answer is reused"

    assert (await edge.fetch(path, headers=B)).body == data
    assert (await edge.fetch(path, headers=B, method="HEAD")).status == 200
    assert fg.probes(path) == 1, "one probe for B, reused"
    probe = next(r for r in fg.requests if r.path == path and r.range == "bytes=0-0")
    assert probe.headers["x-auth-token"] == "tok-b", "asked as the caller"

    for _ in range(2):
        assert (await edge.fetch(path, headers=C)).status == 403
    assert fg.probes(path) == 3, "a refusal is asked again every time"

    await clock.advance(TTL + 0.01)
    assert (await edge.fetch(path, headers=B)).body == data
    assert fg.probes(path) == 4, "asked again after auth_cache_ttl"
    assert fg.count("GET", path) == 1


async def test_concurrent_identical_callers_share_one_probe(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    fg = faulty_glance
    data = os.urandom(64 * 1024)
    image_id = fg.add_image(data, downloaders={"tok-a", "tok-b"})["id"]
    path = file_path(image_id)
    assert (await edge.fetch(path, headers=A)).body == data
    await edge.settled()

    got = await asyncio.gather(*(edge.fetch(path, headers=B) for _ in range(8)))
    assert all(g.body == data for g in got)
    assert fg.probes(path) == 1


async def test_a_fill_refused_to_its_starter_is_not_the_joiners_answer(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    """B (who may see but not download) starts the fill; A, who may download, joins it
    before Glance's 403 to B arrives: A gets the image through a fill of its own."""
    fg = faulty_glance
    data = os.urandom(MiB)
    # B's data GET waits a second, then Glance refuses it; later GETs are prompt.
    image_id = fg.add_image(data, readers={"tok-a", "tok-b"}, downloaders={"tok-a"},
                            fault=Fault(delay=1.0, times=1))["id"]
    path = file_path(image_id)
    refused = asyncio.create_task(edge.fetch(path, headers=B))
    await eventually(lambda: fg.count("GET", path) == 1, WAIT, "B's data GET")
    joined = asyncio.create_task(edge.fetch(path, headers=A))
    await eventually(
        lambda: any(r.path == f"/v2/images/{image_id}" and r.headers.get("x-auth-token")
                    == "tok-a" for r in fg.requests),
        WAIT, "A's lookup")
    assert edge.cache.running_fill(image_id) is not None, "A comes while B's fill waits"

    assert_refused(await refused, data)
    got = await joined
    assert (got.status, got.body) == (200, data)
    await edge.settled()
    assert image_id in edge.data_files()
    assert [r.headers.get("x-auth-token") for r in fg.requests
            if r.path == path and r.range is None] == ["tok-b", "tok-a"]


async def test_a_prefetch_refused_by_glance_is_not_a_joining_callers_answer(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    """The prefetch's credentials (none here) may not download; a caller who may joins
    the prefetch's fill and still gets the image, with its own rights."""
    fg = faulty_glance
    data = os.urandom(MiB)
    image_id = fg.add_image(data, downloaders={"tok-a"}, fault=Fault(delay=1.0, times=1))["id"]
    path = file_path(image_id)
    queued = await edge.fetch(f"/v2/cache/{image_id}", method="PUT")
    assert queued.status == 202, queued.body
    await eventually(lambda: fg.count("GET", path) == 1, WAIT, "the prefetch's data GET")
    assert edge.cache.running_fill(image_id) is not None

    got = await edge.fetch(path, headers=A)

    assert (got.status, got.body) == (200, data)
    await edge.settled()
    assert image_id in edge.data_files()


async def test_offline_serving_needs_a_recent_download_grant(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    """With no Glance answering, a copy is served only to a caller Glance let download it
    (not merely see it) within offline_auth_ttl."""
    glance = FaultyGlance()
    await glance.start()
    clock = FakeClock()
    base = settings(tmp_path / "cache", (glance.url,), auth_cache_ttl=1.0)
    app = make_app(dataclasses.replace(base, upstream=dataclasses.replace(
        base.upstream, serve_cached_on_upstream_failure=True, offline_auth_ttl=600.0)),
        clock=clock)
    edge = Edge(client=await aiohttp_client(app), app=app, root=tmp_path / "cache")
    data = os.urandom(20_000)
    image_id = glance.add_image(data, readers={"tok-a", "tok-b"}, downloaders={"tok-a"})["id"]
    path = file_path(image_id)
    assert (await edge.fetch(path, headers=A)).body == data
    await edge.settled()
    assert (await edge.fetch(path, headers=B)).status == 403  # B saw the record, no more
    await glance.close()
    await clock.advance(2.0)  # past auth_cache_ttl: Glance is asked, and does not answer

    assert (await edge.fetch(path, headers=A)).body == data
    offline = await edge.fetch(path, headers=B)
    assert offline.status == 503
    assert data[:64] not in offline.body
