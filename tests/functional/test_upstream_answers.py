"""Glance decides: refusals relayed, failures a 503 before any body, changes followed.

The rules: docs/behaviour.md#authorization; statuses and error bodies: docs/glance-wire.md.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from lab.units import MiB
from tests.functional import (
    Edge,
    Fetched,
    closed_port_url,
    eventually,
    file_path,
    sha512,
    start_edgecache,
)
from tests.support.faultyglance import Fault, FaultyGlance


@pytest.fixture
async def edge(aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path) -> Edge:
    return await start_edgecache(
        aiohttp_client, tmp_path / "cache", (faulty_glance.url,), auth_cache_ttl=0
    )


def error_message(got: Fetched) -> str:
    """The message of an error body a Glance client can parse (JSON or plain text)."""
    content_type = got.headers.get("Content-Type")
    assert content_type, "an error body without a Content-Type"
    assert got.body, "an error without a body"
    if "json" in content_type:
        document: Any = json.loads(got.body)
        assert isinstance(document, dict)
        values = list(document.values())
        assert values and all(isinstance(v, dict) and "message" in v for v in values), document
        return str(values[0]["message"])
    return got.body.decode()


async def test_unknown_image_is_404(edge: Edge, faulty_glance: FaultyGlance) -> None:
    image_id = str(uuid.uuid4())

    got = await edge.fetch(file_path(image_id))

    assert got.status == 404
    assert got.error is None
    assert image_id in error_message(got)
    assert faulty_glance.count("GET", f"/v2/images/{image_id}") == 1
    assert faulty_glance.count("GET", file_path(image_id)) == 0
    assert edge.data_files() == {}


async def test_id_that_is_not_a_uuid_is_404_without_asking_upstream(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    got = await edge.fetch(file_path("not-an-image"))

    assert got.status == 404
    error_message(got)
    assert faulty_glance.requests == []


async def test_queued_image_is_204_with_empty_body(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    meta = faulty_glance.add_image(b"", status="queued")

    got = await edge.fetch(file_path(meta["id"]))

    assert got.status == 204
    assert got.body == b""
    assert got.error is None
    assert edge.data_files() == {}


async def test_deactivated_image_is_refused_and_evicted(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    fg = faulty_glance
    data = os.urandom(MiB)
    meta = fg.add_image(data)
    image_id = meta["id"]
    assert (await edge.fetch(file_path(image_id))).body == data
    await edge.settled()
    assert image_id in edge.data_files()

    fg.update_image(image_id, status="deactivated")
    got = await edge.fetch(file_path(image_id))

    assert got.status == 403
    assert "deactivated" in error_message(got)
    assert fg.count("GET", file_path(image_id)) == 2  # Glance's own answer was relayed
    await eventually(lambda: image_id not in edge.data_files(), what="data/<id> removed")
    assert not edge.cache.is_committed(image_id)


@pytest.mark.parametrize("status", [500, 503])
async def test_metadata_failure_is_503_before_any_body(
    edge: Edge, faulty_glance: FaultyGlance, status: int
) -> None:
    fg = faulty_glance
    meta = fg.add_image(os.urandom(MiB), fault=Fault(metadata_status=status))

    got = await edge.fetch(file_path(meta["id"]))

    assert got.status == 503
    assert got.error is None
    error_message(got)
    assert fg.count("GET", file_path(meta["id"])) == 0
    assert edge.requests("error") == 1
    assert edge.sample("edgecache_upstream_errors_total", reason="status") == 1


async def test_file_failure_on_a_miss_is_503_before_any_body(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    fg = faulty_glance
    data = os.urandom(MiB)
    meta = fg.add_image(data, fault=Fault(status=500, times=1))
    image_id = meta["id"]

    got = await edge.fetch(file_path(image_id))

    assert got.status == 503
    assert got.error is None
    error_message(got)
    await edge.settled()
    assert edge.data_files() == {}

    again = await edge.fetch(file_path(image_id))
    assert again.status == 200
    assert again.body == data


async def test_upstream_down_is_503_never_500(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    edge = await start_edgecache(aiohttp_client, tmp_path / "cache", (closed_port_url(),))

    image = await edge.fetch(file_path(str(uuid.uuid4())))
    assert image.status == 503
    assert image.error is None
    error_message(image)

    listing = await edge.fetch("/v2/images")
    assert listing.status == 503
    error_message(listing)
    assert edge.sample("edgecache_upstream_errors_total", reason="connect") >= 1


async def test_next_endpoint_is_used_when_the_first_is_down(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path
) -> None:
    """glance_endpoints are tried in order, failing over (docs/behaviour.md#upstream-faults)."""
    fg = faulty_glance
    edge = await start_edgecache(
        aiohttp_client, tmp_path / "cache", (closed_port_url(), fg.url)
    )
    data = os.urandom(MiB)
    meta = fg.add_image(data)

    got = await edge.fetch(file_path(meta["id"]))

    assert got.status == 200
    assert got.body == data


async def test_next_endpoint_is_used_when_the_first_answers_503(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path
) -> None:
    """A Glance that is up but cannot serve (503) is skipped like one that is down."""
    async with FaultyGlance() as failing:
        data = os.urandom(MiB)
        meta = faulty_glance.add_image(data)
        failing.add_image(data, image_id=meta["id"], fault=Fault(status=503, metadata_status=503))
        edge = await start_edgecache(
            aiohttp_client, tmp_path / "cache", (failing.url, faulty_glance.url)
        )

        got = await edge.fetch(file_path(meta["id"]))

        assert got.status == 200
        assert got.body == data
        assert failing.count("GET", f"/v2/images/{meta['id']}") == 1
        assert faulty_glance.count("GET", file_path(meta["id"])) == 1


async def test_image_changed_upstream_is_refetched(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    fg = faulty_glance
    old = os.urandom(2 * MiB)
    image_id = fg.add_image(old)["id"]
    assert (await edge.fetch(file_path(image_id))).body == old
    await edge.settled()
    assert edge.data_bytes(image_id) == old

    # Same id, same size, other bytes (and so other hashes).
    new = os.urandom(len(old))
    meta = fg.add_image(new, image_id=image_id)
    got = await edge.fetch(file_path(image_id))

    assert got.status == 200
    assert got.error is None
    assert got.body == new
    assert sha512(got.body) == meta["os_hash_value"]
    assert got.headers["Content-MD5"] == meta["checksum"]
    assert fg.count("GET", file_path(image_id)) == 2
    await edge.settled()
    await eventually(lambda: edge.data_bytes(image_id) == new, what="new bytes committed")

    hit = await edge.fetch(file_path(image_id))
    assert hit.body == new
    assert fg.count("GET", file_path(image_id)) == 2
    assert edge.requests("hit") == 1


async def test_delete_through_edgecache_purges_the_cached_copy(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    fg = faulty_glance
    data = os.urandom(MiB)
    image_id = fg.add_image(data)["id"]
    assert (await edge.fetch(file_path(image_id))).body == data
    await edge.settled()
    assert image_id in edge.data_files()

    deleted = await edge.fetch(f"/v2/images/{image_id}", method="DELETE")

    assert deleted.status == 204
    assert not fg.has_image(image_id)
    await eventually(lambda: image_id not in edge.data_files(), what="data/<id> removed")
    assert not edge.cache.is_committed(image_id)
    assert edge.sample("edgecache_cache_images") == 0
    assert edge.sample("edgecache_cache_size_bytes") == 0
    gone = await edge.fetch(file_path(image_id))
    assert gone.status == 404


async def test_delete_refused_upstream_keeps_the_cached_copy(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    fg = faulty_glance
    data = os.urandom(MiB)
    image_id = fg.add_image(data)["id"]
    assert (await edge.fetch(file_path(image_id))).body == data
    await edge.settled()
    fg.stub("DELETE", f"/v2/images/{image_id}", status=403, json_body={
        "error": {"code": 403, "title": "Forbidden", "message": "not yours"},
    })

    refused = await edge.fetch(f"/v2/images/{image_id}", method="DELETE")

    assert refused.status == 403
    assert error_message(refused) == "not yours"
    assert image_id in edge.data_files()
    hit = await edge.fetch(file_path(image_id))
    assert hit.body == data
    assert edge.requests("hit") == 1


async def test_cached_bytes_only_reach_callers_glance_lets_read(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    """Cached bytes are never served to a caller Glance would refuse (docs/behaviour.md)."""
    fg = faulty_glance
    data = os.urandom(MiB)
    image_id = fg.add_image(data, readers={"tok-owner"})["id"]
    owner = await edge.fetch(file_path(image_id), headers={"X-Auth-Token": "tok-owner"})
    assert owner.status == 200
    assert owner.body == data
    await edge.settled()
    assert image_id in edge.data_files()

    stranger = await edge.fetch(file_path(image_id), headers={"X-Auth-Token": "tok-other"})
    assert stranger.status == 404
    assert data[:64] not in stranger.body
    error_message(stranger)

    anonymous = await edge.fetch(file_path(image_id))
    assert anonymous.status == 401
    assert "WWW-Authenticate" in anonymous.headers
    assert data[:64] not in anonymous.body

    again = await edge.fetch(file_path(image_id), headers={"X-Auth-Token": "tok-owner"})
    assert again.body == data
    assert edge.requests("hit") == 1
    assert fg.count("GET", file_path(image_id)) == 1
    # The caller's own token went upstream with the fill.
    file_get = next(r for r in fg.requests if r.path == file_path(image_id))
    assert file_get.headers["x-auth-token"] == "tok-owner"
