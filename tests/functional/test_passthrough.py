"""Everything that is not image data goes to Glance and back verbatim.

See docs/behaviour.md#http-surface.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from lab.units import MiB
from tests.functional import Edge, start_edgecache
from tests.support.faultyglance import FaultyGlance


@pytest.fixture
async def edge(aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path) -> Edge:
    return await start_edgecache(aiohttp_client, tmp_path / "cache", (faulty_glance.url,))


async def test_upload_streams_with_its_content_length(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    image_id = faulty_glance.add_image(b"", status="queued")["id"]
    body = os.urandom(5 * MiB)

    got = await edge.fetch(
        f"/v2/images/{image_id}/file",
        method="PUT",
        data=body,
        headers={
            "Content-Type": "application/octet-stream",
            "X-Auth-Token": "tok-1234",
            "X-OpenStack-Request-ID": "req-upload-1",
        },
    )

    assert got.status == 200
    echo: dict[str, Any] = json.loads(got.body)
    assert echo["method"] == "PUT"
    assert echo["path"] == f"/v2/images/{image_id}/file"
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert echo["content_length"] == len(body)
    assert echo["chunked"] is False
    assert echo["x-auth-token"] == "tok-1234"
    assert echo["x-openstack-request-id"] == "req-upload-1"
    assert echo["headers"]["content-type"] == "application/octet-stream"
    assert got.headers["x-openstack-request-id"] == "req-upload-1"
    assert edge.data_files() == {}


async def test_request_and_response_headers_cross_hop_by_hop_ones_do_not(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    got = await edge.fetch(
        "/v2/images?limit=2&sort_key=name",
        headers={
            "X-Auth-Token": "tok-5678",
            "X-Service-Token": "svc-1",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "dropped",
            "Proxy-Authorization": "Basic dropped",
        },
    )

    assert got.status == 200
    echo: dict[str, Any] = json.loads(got.body)
    assert echo["method"] == "GET"
    assert echo["path"] == "/v2/images"
    assert echo["query"] == "limit=2&sort_key=name"
    assert echo["x-auth-token"] == "tok-5678"
    assert echo["x-service-token"] == "svc-1"
    assert "x-hop" not in echo["headers"]
    assert "proxy-authorization" not in echo["headers"]
    # Every response names its request; the upstream's id comes back.
    assert echo["x-openstack-request-id"]
    assert got.headers["x-openstack-request-id"] == echo["x-openstack-request-id"]


async def test_upstream_response_comes_back_as_is(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    schema = {"name": "image", "properties": {"id": {"type": "string"}}}
    faulty_glance.stub(
        "GET",
        "/v2/schemas/image",
        status=203,
        json_body=schema,
        headers={"X-Glance-Thing": "kept", "Location": "http://glance.example/x"},
    )

    got = await edge.fetch("/v2/schemas/image")

    assert got.status == 203
    assert json.loads(got.body) == schema
    assert got.headers["X-Glance-Thing"] == "kept"
    assert got.headers["Location"] == "http://glance.example/x"
    assert got.headers["Content-Type"].startswith("application/json")


async def test_path_prefix_is_dropped_before_passthrough(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    got = await edge.fetch("/image/v2/schemas/images")

    assert got.status == 200
    assert json.loads(got.body)["path"] == "/v2/schemas/images"


@pytest.mark.parametrize(("path", "status"), [("/versions", 200), ("/", 300)])
async def test_version_documents_point_at_edgecache(
    edge: Edge, faulty_glance: FaultyGlance, path: str, status: int
) -> None:
    got = await edge.fetch(path)

    assert got.status == status
    assert got.headers["Content-Type"].startswith("application/json")
    document = json.loads(got.body)
    server = edge.client.server
    own = f"http://{server.host}:{server.port}/v2/"
    hrefs = {
        link["href"] for version in document["versions"] for link in version["links"]
    }
    assert hrefs == {own}
    ids = {version["id"] for version in document["versions"]}
    assert {"v2.0", "v2.14"} <= ids
    assert [v["status"] for v in document["versions"]].count("CURRENT") == 1
    assert faulty_glance.requests == []


async def test_own_endpoints_are_not_forwarded(edge: Edge, faulty_glance: FaultyGlance) -> None:
    health = await edge.fetch("/healthcheck")
    assert health.status == 200

    metrics = await edge.fetch("/metrics")
    assert metrics.status == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert b"edgecache_image_requests_total" in metrics.body
    assert b"edgecache_cache_max_size_bytes" in metrics.body

    assert faulty_glance.requests == []


async def test_api_calls_reuse_one_keep_alive_connection_to_glance(
    edge: Edge, faulty_glance: FaultyGlance
) -> None:
    image_id = faulty_glance.add_image(b"some bytes")["id"]
    faulty_glance.clear_requests()

    for _ in range(20):
        got = await edge.fetch(f"/v2/images/{image_id}")
        assert got.status == 200
        assert json.loads(got.body)["id"] == image_id

    assert faulty_glance.count("GET", f"/v2/images/{image_id}") == 20
    assert faulty_glance.connections() == 1


async def test_small_answer_cut_short_by_glance_is_a_clean_503(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    # Glance announces 100 bytes of JSON, sends 10 and closes: nothing of it has
    # reached the client yet, so the client gets an error it can retry, not a torn body.
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"id\": \"12")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(cut, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        edge = await start_edgecache(
            aiohttp_client, tmp_path / "cache", (f"http://127.0.0.1:{port}",)
        )
        got = await edge.fetch("/v2/schemas/image")
    finally:
        server.close()
        await server.wait_closed()

    assert got.status == 503
    assert not got.broken
