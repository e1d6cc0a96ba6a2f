"""Cached copies against what Glance says now.

Changed bytes are refetched, deleted images purged (but never on a stranger's
404), and while no Glance answers a copy goes only to a caller Glance granted it
to recently (``serve_cached_on_upstream_failure``). FaultyGlance can do what a
real Glance cannot: change an active image's bytes under the same id.

The reuse ttl, the deletion-check interval and the offline grants run on a
FakeClock handed to the app: each test moves it to just before and just after
the boundary it is about, and asserts both sides.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from pytest_aiohttp import AiohttpClient

from edgecache.access.purge import DeletionCheck
from edgecache.api.routes import SERVICE_KEY
from edgecache.daemon.app import make_app
from tests.functional import Edge, eventually, file_path, settings
from tests.support.clock import FakeClock
from tests.support.faultyglance import FaultyGlance

TTL = 0.25
#: A step exact in binary, so stepping back and forth lands on a deadline exactly.
TICK = 1 / 64


async def _edge(aiohttp_client: AiohttpClient, root: Path, url: str, clock: FakeClock, *,
                offline_ttl: float | None = None) -> Edge:
    base = settings(root, (url,), auth_cache_ttl=TTL)
    upstream = base.upstream
    if offline_ttl is not None:
        upstream = dataclasses.replace(
            upstream, serve_cached_on_upstream_failure=True, offline_auth_ttl=offline_ttl
        )
    app = make_app(dataclasses.replace(base, upstream=upstream), clock=clock)
    return Edge(client=await aiohttp_client(app), app=app, root=root)


def _deletions(edge: Edge) -> DeletionCheck:
    deletions = edge.app[SERVICE_KEY].deletions
    assert deletions is not None
    return deletions


async def test_changed_hash_is_refetched(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path
) -> None:
    clock = FakeClock()
    edge = await _edge(aiohttp_client, tmp_path, faulty_glance.url, clock)
    old = os.urandom(50_000)
    image_id = faulty_glance.add_image(old)["id"]
    assert (await edge.fetch(file_path(image_id))).status == 200
    await edge.settled()
    new = os.urandom(50_000)
    faulty_glance.add_image(new, image_id=image_id)  # same id and size, other bytes
    await clock.advance(TTL)
    assert (await edge.fetch(file_path(image_id))).body == old, "Glance's answer is reused"
    await clock.advance(TICK)

    got = await edge.fetch(file_path(image_id))

    assert got.body == new
    assert faulty_glance.count("GET", file_path(image_id)) == 2
    await edge.settled()
    assert edge.data_bytes(image_id) == new


async def test_hashless_image_with_a_new_updated_at_is_refetched(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path
) -> None:
    clock = FakeClock()
    edge = await _edge(aiohttp_client, tmp_path, faulty_glance.url, clock)
    old = os.urandom(30_000)
    image_id = faulty_glance.add_image(old, os_hash_value=None, checksum=None,
                                       os_hash_algo=None)["id"]
    assert (await edge.fetch(file_path(image_id))).body == old
    await edge.settled()
    new = os.urandom(30_000)
    later = {"updated_at": "2100-01-01T00:00:00Z"}  # Glance's stamps have whole seconds
    faulty_glance.add_image(new, image_id=image_id, os_hash_value=None, checksum=None,
                            os_hash_algo=None, properties=later)
    await clock.advance(TTL)
    assert (await edge.fetch(file_path(image_id))).body == old, "Glance's answer is reused"
    await clock.advance(TICK)

    assert (await edge.fetch(file_path(image_id))).body == new
    assert faulty_glance.count("GET", file_path(image_id)) == 2


async def test_deleted_image_is_purged_but_a_strangers_404_purges_nothing(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path
) -> None:
    clock = FakeClock()
    edge = await _edge(aiohttp_client, tmp_path, faulty_glance.url, clock)
    data = os.urandom(40_000)
    image_id = faulty_glance.add_image(data, readers={"tok-a"})["id"]
    owner = {"X-Auth-Token": "tok-a"}
    assert (await edge.fetch(file_path(image_id), headers=owner)).body == data
    await edge.settled()

    for _ in range(5):
        stranger = await edge.fetch(file_path(image_id), headers={"X-Auth-Token": "tok-b"})
        assert stranger.status == 404
    await _deletions(edge).idle()  # the check (no token: Glance says 401) decides nothing
    assert edge.cache.is_committed(image_id)

    def checks() -> int:
        return sum(1 for r in faulty_glance.requests
                   if r.path == f"/v2/images/{image_id}" and not r.headers.get("x-auth-token"))

    assert checks() == 1, "one check per image and interval, however many 404s"

    faulty_glance.remove_image(image_id)
    # The next check is allowed after max(1 s, auth_cache_ttl); the owner's answer is
    # older than the ttl by then, so the owner hears Glance's 404 both times.
    await clock.advance(1.0 - TICK)
    assert (await edge.fetch(file_path(image_id), headers=owner)).status == 404
    await _deletions(edge).idle()
    assert checks() == 1, "no check within the interval"
    assert edge.cache.is_committed(image_id)
    await clock.advance(TICK)
    assert (await edge.fetch(file_path(image_id), headers=owner)).status == 404
    await eventually(lambda: not edge.cache.is_committed(image_id), what="the purge")
    assert checks() == 2
    await eventually(lambda: not (tmp_path / "data" / image_id).exists(), what="the file")


async def test_offline_answers_only_recent_grants(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    glance = FaultyGlance()
    await glance.start()
    clock = FakeClock()
    offline_ttl = 0.75
    edge = await _edge(aiohttp_client, tmp_path, glance.url, clock, offline_ttl=offline_ttl)
    data = os.urandom(20_000)
    image_id = glance.add_image(data, readers={"tok-a"})["id"]
    owner = {"X-Auth-Token": "tok-a"}
    assert (await edge.fetch(file_path(image_id), headers=owner)).body == data
    assert (await edge.fetch(file_path(image_id),
                             headers={"X-Auth-Token": "tok-b"})).status == 404
    await edge.settled()
    await glance.close()  # no upstream answers any more
    await clock.advance(TTL + TICK)  # Glance's answers are not reused: it is asked, in vain

    served = await edge.fetch(file_path(image_id), headers={"X-Auth-Token": "tok-a"})
    assert served.status == 200
    assert served.body == data
    for token in ("tok-b", "tok-c"):
        refused = await edge.fetch(file_path(image_id), headers={"X-Auth-Token": token})
        assert refused.status == 503
    await clock.advance(offline_ttl - TTL - 2 * TICK)  # just before the grant is too old
    assert (await edge.fetch(file_path(image_id), headers=owner)).status == 200
    await clock.advance(2 * TICK)
    late = await edge.fetch(file_path(image_id), headers={"X-Auth-Token": "tok-a"})
    assert late.status == 503
    assert late.headers["Retry-After"] == "1"
