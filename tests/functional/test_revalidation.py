"""Cached copies against what Glance says now (spec §5.2, glance-contract §8 item 22).

Changed bytes are refetched, deleted images purged (but never on a stranger's
404), and while no Glance answers a copy goes only to a caller Glance granted it
to recently (``serve_cached_on_upstream_failure``). FaultyGlance can do what a
real Glance cannot: change an active image's bytes under the same id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

from pytest_aiohttp import AiohttpClient

from edgecache.daemon.app import make_app
from tests.functional import Edge, eventually, file_path, settings
from tests.support.faultyglance import FaultyGlance

TTL = 0.2


async def _edge(aiohttp_client: AiohttpClient, root: Path, url: str, *,
                offline_ttl: float | None = None) -> Edge:
    base = settings(root, (url,), auth_cache_ttl=TTL)
    upstream = base.upstream
    if offline_ttl is not None:
        upstream = dataclasses.replace(
            upstream, serve_cached_on_upstream_failure=True, offline_auth_ttl=offline_ttl
        )
    app = make_app(dataclasses.replace(base, upstream=upstream))
    return Edge(client=await aiohttp_client(app), app=app, root=root)


async def test_changed_hash_is_refetched(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path
) -> None:
    edge = await _edge(aiohttp_client, tmp_path, faulty_glance.url)
    image_id = faulty_glance.add_image(os.urandom(50_000))["id"]
    assert (await edge.fetch(file_path(image_id))).status == 200
    await edge.settled()
    new = os.urandom(50_000)
    faulty_glance.add_image(new, image_id=image_id)  # same id and size, other bytes
    await asyncio.sleep(TTL + 0.05)

    got = await edge.fetch(file_path(image_id))

    assert got.body == new
    assert faulty_glance.count("GET", file_path(image_id)) == 2
    await edge.settled()
    assert edge.data_bytes(image_id) == new


async def test_hashless_image_with_a_new_updated_at_is_refetched(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path
) -> None:
    edge = await _edge(aiohttp_client, tmp_path, faulty_glance.url)
    old = os.urandom(30_000)
    image_id = faulty_glance.add_image(old, os_hash_value=None, checksum=None,
                                       os_hash_algo=None)["id"]
    assert (await edge.fetch(file_path(image_id))).body == old
    await edge.settled()
    await asyncio.sleep(1.1)  # Glance's timestamps have whole seconds
    new = os.urandom(30_000)
    faulty_glance.add_image(new, image_id=image_id, os_hash_value=None, checksum=None,
                            os_hash_algo=None)
    await asyncio.sleep(TTL + 0.05)

    assert (await edge.fetch(file_path(image_id))).body == new
    assert faulty_glance.count("GET", file_path(image_id)) == 2


async def test_deleted_image_is_purged_but_a_strangers_404_purges_nothing(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path
) -> None:
    edge = await _edge(aiohttp_client, tmp_path, faulty_glance.url)
    data = os.urandom(40_000)
    image_id = faulty_glance.add_image(data, readers={"tok-a"})["id"]
    owner = {"X-Auth-Token": "tok-a"}
    assert (await edge.fetch(file_path(image_id), headers=owner)).body == data
    await edge.settled()

    for _ in range(5):
        stranger = await edge.fetch(file_path(image_id), headers={"X-Auth-Token": "tok-b"})
        assert stranger.status == 404
    await asyncio.sleep(0.3)  # the check (no token: Glance says 401) decides nothing
    assert edge.cache.is_committed(image_id)
    checks = [r for r in faulty_glance.requests
              if r.path == f"/v2/images/{image_id}" and not r.headers.get("x-auth-token")]
    assert len(checks) == 1, "one check per image and interval, however many 404s"

    faulty_glance.remove_image(image_id)
    await asyncio.sleep(1.05)  # the next check is allowed after max(1 s, auth_cache_ttl)
    assert (await edge.fetch(file_path(image_id), headers=owner)).status == 404
    await eventually(lambda: not edge.cache.is_committed(image_id), what="the purge")
    await eventually(lambda: not (tmp_path / "data" / image_id).exists(), what="the file")


async def test_offline_answers_only_recent_grants(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    glance = FaultyGlance()
    await glance.start()
    edge = await _edge(aiohttp_client, tmp_path, glance.url, offline_ttl=0.8)
    data = os.urandom(20_000)
    image_id = glance.add_image(data, readers={"tok-a"})["id"]
    owner = {"X-Auth-Token": "tok-a"}
    assert (await edge.fetch(file_path(image_id), headers=owner)).body == data
    assert (await edge.fetch(file_path(image_id),
                             headers={"X-Auth-Token": "tok-b"})).status == 404
    await edge.settled()
    await glance.close()  # no upstream answers any more
    await asyncio.sleep(TTL + 0.05)

    served = await edge.fetch(file_path(image_id), headers={"X-Auth-Token": "tok-a"})
    assert served.status == 200
    assert served.body == data
    for token in ("tok-b", "tok-c"):
        refused = await edge.fetch(file_path(image_id), headers={"X-Auth-Token": token})
        assert refused.status == 503
    await asyncio.sleep(0.8)
    late = await edge.fetch(file_path(image_id), headers={"X-Auth-Token": "tok-a"})
    assert late.status == 503
    assert late.headers["Retry-After"] == "1"
