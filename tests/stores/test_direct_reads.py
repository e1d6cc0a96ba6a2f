"""``[upstream] direct_stores``: fills read the store, Glance keeps the verdict."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from edgecache.metrics import Metrics
from edgecache.model import ImageMeta
from edgecache.upstream.glance import GlanceUpstream
from edgecache.upstream.stores import DirectStoreSource, default_stores
from edgecache.upstream.stores.allow import StoreAllowlist
from lab.edgecache import EdgecacheProcess, metric_value
from lab.glance import LocalGlance
from lab.polling import wait_until
from lab.units import MiB
from tests.fleet.conftest import get
from tests.functional import WAIT, eventually, file_path, start_edgecache
from tests.stores.conftest import StoreProxy
from tests.support.faultyglance import Fault, FaultyGlance


class RequestLog(ThreadingHTTPServer):
    """A server a location may name: it logs every request and answers each with 404."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _LogHandler)
        self.requests: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _LogHandler(BaseHTTPRequestHandler):
    server: RequestLog

    def log_message(self, format: str, *args: object) -> None:
        pass

    def handle_one_request(self) -> None:
        self.raw_requestline = self.rfile.readline(65537)
        if self.raw_requestline:
            self.server.requests.append(("request", self.raw_requestline.decode("latin-1")))
            self.close_connection = True
            self.wfile.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")


@pytest.fixture
def request_log() -> Iterator[RequestLog]:
    server = RequestLog()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_glance_file_store_is_read_directly(
    locations_glance: LocalGlance, tmp_path: Path
) -> None:
    glance = locations_glance
    data = os.urandom(5 * MiB + 3)
    image = glance.create_image(data, name="direct")
    image_id = str(image["id"])
    assert image["locations"] == [
        {"url": (glance.data_dir / "images" / image_id).as_uri(), "metadata": {}}
    ]

    with EdgecacheProcess(
        tmp_path, glance_endpoints=[glance.url], auth_cache_ttl=1,
        options={"upstream": {
            "direct_stores": "true",
            "direct_store_allow": (glance.data_dir / "images").as_uri() + "/",
        }},
    ) as edge:
        status, body, whole = get(edge.url, file_path(image_id))
        assert (status, whole) == (200, True)
        assert hashlib.sha512(body).hexdigest() == image["os_hash_value"]
        wait_until(lambda: (edge.data_dir / image_id).is_file(), "the commit")
        assert glance.count_requests("GET", f"/v2/images/{image_id}", at_least=1) >= 1
        assert glance.count_requests("GET", file_path(image_id), at_least=1, timeout=1) == 0
        assert metric_value(edge.url, "edgecache_upstream_errors_total", reason="store") == 0


def test_a_location_outside_the_allowlist_is_never_contacted(
    http_store_glance: LocalGlance, store_proxy: StoreProxy, request_log: RequestLog,
    tmp_path: Path,
) -> None:
    """A real Glance record whose location names a server on another loopback port,
    outside direct_store_allow (docs/behaviour.md#direct-store-reads). That server
    hears nothing at all (Glance reads its http locations through a proxy); the image
    comes, verified, from Glance's /file, and the refusal is counted."""
    glance = http_store_glance
    data = os.urandom(3 * MiB + 17)
    image = glance.create_image(data, name="elsewhere")
    image_id = str(image["id"])
    url = f"{request_log.url}/objects/{image_id}"
    store_proxy.objects[url] = data
    # the http location in, Glance's own file location out: the record names only the
    # server, and Glance reads it from there (through the proxy)
    patch = [{"op": "add", "path": "/locations/-", "value": {"url": url, "metadata": {}}},
             {"op": "remove", "path": "/locations/0"}]
    answer = glance.request(
        "PATCH", f"/v2/images/{image_id}", json.dumps(patch).encode(),
        {"Content-Type": "application/openstack-images-v2.1-json-patch"},
    )
    assert answer.status == 200, answer.body
    record = glance.get_image(image_id)
    assert [loc["url"] for loc in record["locations"]] == [url]
    assert ("HEAD", url) in store_proxy.requests  # Glance checked it, through the proxy
    elsewhere = f"http://127.0.0.1:{request_log.server_address[1] + 1}/"

    with EdgecacheProcess(
        tmp_path, glance_endpoints=[glance.url], auth_cache_ttl=1,
        options={"upstream": {"direct_stores": "true", "direct_store_allow": elsewhere}},
    ) as edge:
        status, body, whole = get(edge.url, file_path(image_id))
        assert (status, whole) == (200, True)
        assert hashlib.sha512(body).hexdigest() == record["os_hash_value"]
        assert request_log.requests == []
        wait_until(lambda: (edge.data_dir / image_id).is_file(), "the commit")
        assert (edge.data_dir / image_id).read_bytes() == data
        assert glance.count_requests("GET", file_path(image_id), at_least=1) == 1
        assert metric_value(edge.url, "edgecache_upstream_errors_total",
                            reason="store_refused") == 1
        assert metric_value(edge.url, "edgecache_upstream_errors_total", reason="store") == 0
    assert ("GET", url) in store_proxy.requests  # Glance's /file read it
    assert request_log.requests == []


async def test_an_unreadable_location_falls_back_to_glance(
    locations_glance: LocalGlance, tmp_path: Path
) -> None:
    """The record names a store file this host cannot see: the bytes come from /file."""
    glance = locations_glance
    data = os.urandom(2 * MiB + 1)
    record = await asyncio.to_thread(glance.create_image, data, name="fallback")
    image_id = str(record["id"])
    meta = dataclasses.replace(
        ImageMeta.from_glance(record),
        locations=((tmp_path / "not-mounted" / image_id).as_uri(), "http://127.0.0.1:9/nothing"),
    )
    metrics = Metrics()
    async with GlanceUpstream((glance.url,)) as upstream:
        allow = StoreAllowlist([tmp_path.as_uri() + "/", "http://127.0.0.1:9/"])
        source = DirectStoreSource(upstream, default_stores(upstream.session, allow=allow),
                                   metrics)
        body = await source.open_image(image_id, {}, meta=meta)
        try:
            got = b"".join([chunk async for chunk in body.chunks()])
        finally:
            body.close()
    assert hashlib.sha512(got).hexdigest() == record["os_hash_value"]
    assert await asyncio.to_thread(
        glance.count_requests, "GET", file_path(image_id), at_least=1
    ) == 1
    assert metrics.registry.get_sample_value(
        "edgecache_upstream_errors_total", {"reason": "store"}
    ) == 1


async def test_a_missing_store_object_falls_back_and_is_counted_once(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path
) -> None:
    fg = faulty_glance
    data = os.urandom(3 * MiB + 7)
    image_id = fg.add_image(data, properties={"locations": [
        {"url": (tmp_path / "gone").as_uri(), "metadata": {}},
        {"url": fg.url + "/objects/gone", "metadata": {}},
    ]})["id"]
    edge = await start_edgecache(aiohttp_client, tmp_path / "cache", (fg.url,),
                                 direct_stores=True,
                                 direct_store_allow=(tmp_path.as_uri() + "/", fg.url + "/objects/"))

    got = await edge.fetch(file_path(image_id))

    assert (got.status, got.error, got.body) == (200, None, data)
    assert fg.count("GET", file_path(image_id)) == 1
    assert edge.sample("edgecache_upstream_errors_total", reason="store") == 1
    await edge.settled()
    assert edge.data_bytes(image_id) == data


async def test_a_store_body_that_breaks_off_resumes_from_the_store(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path
) -> None:
    """The http store object (another image's /file here) is cut once; the resume asks it
    for the rest with a Range, and Glance's /file for the image is never used."""
    fg = faulty_glance
    data = os.urandom(4 * MiB + 9)
    store_object = fg.add_image(
        data,
        fault=Fault(cut_after=len(data) // 2, trickle_chunk=256 * 1024, trickle_delay=0.005,
                    times=1),
    )["id"]
    image_id = fg.add_image(data, properties={"locations": [
        {"url": fg.url + file_path(store_object), "metadata": {}},
    ]})["id"]
    edge = await start_edgecache(aiohttp_client, tmp_path / "cache", (fg.url,),
                                 direct_stores=True,
                                 direct_store_allow=(fg.url + file_path(store_object),))

    got = await edge.fetch(file_path(image_id))

    assert (got.status, got.error, got.body) == (200, None, data)
    assert fg.count("GET", file_path(image_id)) == 0
    reads = [r for r in fg.requests if r.path == file_path(store_object)]
    assert [r.range is not None for r in reads] == [False, True]
    assert edge.sample("edgecache_upstream_errors_total", reason="store") == 0
    await edge.settled()
    assert edge.data_bytes(image_id) == data


async def test_without_direct_stores_the_locations_are_ignored(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path
) -> None:
    fg = faulty_glance
    data = os.urandom(MiB)
    store_object = fg.add_image(data)["id"]
    image_id = fg.add_image(data, properties={"locations": [
        {"url": fg.url + file_path(store_object), "metadata": {}},
    ]})["id"]
    edge = await start_edgecache(aiohttp_client, tmp_path / "cache", (fg.url,))

    got = await edge.fetch(file_path(image_id))

    assert (got.status, got.body) == (200, data)
    await eventually(lambda: fg.count("GET", file_path(image_id)) == 1, WAIT, "the GET")
    assert fg.count("GET", file_path(store_object)) == 0


async def test_locations_are_parsed_in_order_then_direct_url() -> None:
    meta = ImageMeta.from_glance({
        "id": "x", "direct_url": "file:///b",
        "locations": [{"url": "http://a/1", "metadata": {}}, {"url": "file:///b"}, "junk"],
    })
    assert meta.locations == ("http://a/1", "file:///b")
    assert ImageMeta.from_glance({"id": "x"}).locations == ()
