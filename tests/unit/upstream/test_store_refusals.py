"""Store locations edgecache must not contact (docs/behaviour.md#direct-store-reads).

Small aiohttp servers on 127.0.0.1 stand in for stores; each records every
request it receives, so "not contacted" is asserted as an empty request log.
The keystoneauth1 session is a stand-in with the two calls SwiftStore makes
(the real-Keystone path is tests/stores/test_swift_keystone.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient, AiohttpServer

from edgecache.clock import SYSTEM
from edgecache.daemon.app import make_app
from edgecache.metrics import Metrics
from edgecache.model import ImageMeta
from edgecache.upstream.glance import GlanceUpstream
from edgecache.upstream.stores import DirectStoreSource, StoreRegistry, default_stores
from edgecache.upstream.stores.allow import StoreAllowlist, StoreRefused
from edgecache.upstream.stores.file import FileStore
from edgecache.upstream.stores.http import HttpStore
from edgecache.upstream.stores.swift import KeystoneSession, SwiftStore
from lab.units import MiB
from tests.functional import Edge, file_path, settings, start_edgecache
from tests.support.faultyglance import FaultyGlance

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Recorder:
    """A store stand-in: every request is logged, then answered by ``answer``."""

    answer: Handler
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs, dict(request.headers)))
        return await self.answer(request)


async def serve(aiohttp_server: AiohttpServer, answer: Handler) -> Recorder:
    recorder = Recorder(answer)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    server = await aiohttp_server(app)
    recorder.url = str(server.make_url("")).rstrip("/")
    return recorder


def bytes_answer(data: bytes) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=data)

    return answer


async def read_all(body: object) -> bytes:
    from edgecache.model import ImageBody

    image_body = cast(ImageBody, body)
    try:
        return b"".join([chunk async for chunk in image_body.chunks()])
    finally:
        image_body.close()


async def test_an_http_store_that_redirects_is_refused_and_the_redirect_not_followed(
    aiohttp_server: AiohttpServer,
) -> None:
    elsewhere = await serve(aiohttp_server, bytes_answer(b"other bytes"))

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(elsewhere.url + "/object")

    store = await serve(aiohttp_server, redirect)
    # even a redirect to a place that is itself allowed is not followed
    allow = StoreAllowlist([store.url + "/", elsewhere.url + "/"])
    async with aiohttp.ClientSession() as session:
        with pytest.raises(StoreRefused, match="302"):
            await HttpStore(session, allow=allow).open(store.url + "/image")
    assert [r[:2] for r in store.requests] == [("GET", "/image")]
    assert elsewhere.requests == []


async def test_an_http_location_outside_the_allowlist_is_not_contacted(
    aiohttp_server: AiohttpServer,
) -> None:
    store = await serve(aiohttp_server, bytes_answer(b"x"))
    host, port = store.url.split("://", 1)[1].split(":")
    allow = StoreAllowlist([f"http://{host}:{int(port) + 1}/", f"http://{host}.evil:{port}/"])
    async with aiohttp.ClientSession() as session:
        with pytest.raises(StoreRefused, match="direct_store_allow"):
            await HttpStore(session, allow=allow).open(store.url + "/image")
    assert store.requests == []


class CatalogSession:
    """The keystoneauth1 Session calls SwiftStore makes: a token and one catalog endpoint."""

    def __init__(self, storage_url: str) -> None:
        self.storage_url = storage_url
        self.token = "gAAAA-upstream-auth-token"

    def get_token(self) -> str:
        return self.token

    def get_endpoint(self, **kwargs: object) -> str:
        assert kwargs["service_type"] == "object-store"
        return self.storage_url

    def invalidate(self) -> bool:
        return True


async def test_the_upstream_auth_token_only_goes_to_its_own_catalogs_swift(
    aiohttp_server: AiohttpServer,
) -> None:
    data = os.urandom(1000)
    ours = await serve(aiohttp_server, bytes_answer(data))
    other = await serve(aiohttp_server, bytes_answer(data))
    catalog = CatalogSession(ours.url + "/v1/AUTH_glance")
    # both hosts are allowed: the catalog rule holds on its own
    allow = StoreAllowlist([ours.url + "/", other.url + "/"])
    async with aiohttp.ClientSession() as session:
        store = SwiftStore(session, cast(KeystoneSession, catalog), allow=allow)
        own = f"swift+http://{ours.url.split('://', 1)[1]}/v1/AUTH_glance/glance/img"
        assert await read_all(await store.open(own)) == data
        foreign = f"swift+http://{other.url.split('://', 1)[1]}/v1/AUTH_glance/glance/img"
        with pytest.raises(StoreRefused, match="catalog"):
            await store.open(foreign)
        # the same host on another scheme is another endpoint
        with pytest.raises(StoreRefused):
            await store.open(own.replace("swift+http://", "swift+https://"))
    assert other.requests == []
    assert [(m, p, h.get("X-Auth-Token")) for m, p, h in ours.requests] == [
        ("GET", "/v1/AUTH_glance/glance/img", catalog.token)
    ]


async def test_a_swift_redirect_does_not_carry_the_token_away(
    aiohttp_server: AiohttpServer,
) -> None:
    elsewhere = await serve(aiohttp_server, bytes_answer(b"x"))

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(elsewhere.url + "/stolen")

    ours = await serve(aiohttp_server, redirect)
    catalog = CatalogSession(ours.url + "/v1/AUTH_glance")
    allow = StoreAllowlist([ours.url + "/", elsewhere.url + "/"])
    async with aiohttp.ClientSession() as session:
        store = SwiftStore(session, cast(KeystoneSession, catalog), allow=allow)
        with pytest.raises(StoreRefused, match="307"):
            await store.open(f"swift+http://{ours.url.split('://', 1)[1]}/v1/AUTH_glance/c/o")
    assert len(ours.requests) == 1
    assert elsewhere.requests == []


async def test_a_v1_swift_auth_address_outside_the_allowlist_is_not_sent_credentials(
    aiohttp_server: AiohttpServer,
) -> None:
    auth = await serve(aiohttp_server, bytes_answer(b""))
    async with aiohttp.ClientSession() as session:
        store = SwiftStore(session, allow=StoreAllowlist(["http://127.0.0.1:9/"]))
        location = f"swift+http://test:tester:pw@{auth.url.split('://', 1)[1]}/auth/v1.0/c/o"
        with pytest.raises(StoreRefused):
            await store.open(location)
    assert auth.requests == []


async def test_a_file_outside_the_allowed_directories_is_not_opened(tmp_path: Path) -> None:
    store_dir = tmp_path / "glance-images"
    store_dir.mkdir()
    inside = store_dir / "img"
    inside.write_bytes(b"image bytes")
    outside = tmp_path / "elsewhere"
    outside.write_bytes(b"not for you")
    os.symlink(outside, store_dir / "link")
    files = FileStore(allow=StoreAllowlist([store_dir.as_uri() + "/"]))

    assert await read_all(await files.open(inside.as_uri())) == b"image bytes"
    for url in (outside.as_uri(), (store_dir / "link").as_uri(),
                store_dir.as_uri() + "/../elsewhere"):
        with pytest.raises(StoreRefused):
            await files.open(url)


async def test_an_s3_location_outside_the_allowed_endpoints_is_not_contacted(
    aiohttp_server: AiohttpServer,
) -> None:
    pytest.importorskip("aiobotocore", reason="the s3 extra is not installed")
    from edgecache.upstream.stores.s3 import S3Store

    endpoint = await serve(aiohttp_server, bytes_answer(b"x"))
    service = endpoint.url.split("://", 1)[1]
    # the endpoint is allowed, but only for another bucket
    s3 = S3Store(allow=StoreAllowlist([endpoint.url + "/other-bucket/"]), connect_timeout=1)
    with pytest.raises(StoreRefused):
        await s3.open(f"s3://AK:SK@{service}/images/img")
    with pytest.raises(StoreRefused):  # s3+https:// reads over https: another origin
        await S3Store(allow=StoreAllowlist([endpoint.url + "/"])).open(
            f"s3+https://AK:SK@{service}/images/img")
    assert endpoint.requests == []


async def test_an_image_without_a_hash_is_never_read_from_a_store(
    aiohttp_server: AiohttpServer, faulty_glance: FaultyGlance
) -> None:
    fg = faulty_glance
    data = os.urandom(MiB + 1)
    store = await serve(aiohttp_server, bytes_answer(data))
    record = fg.add_image(data, os_hash_value=None, checksum=None, properties={
        "locations": [{"url": store.url + "/img", "metadata": {}}],
    })
    meta = ImageMeta.from_glance(record)
    assert meta.strongest_hash() is None and meta.size == len(data)
    metrics = Metrics()
    async with GlanceUpstream((fg.url,)) as upstream:
        stores = StoreRegistry([HttpStore(upstream.session,
                                          allow=StoreAllowlist([store.url + "/"]))])
        source = DirectStoreSource(upstream, stores, metrics)
        assert await read_all(await source.open_image(record["id"], {}, meta=meta)) == data
        # a resume of the same fill: not counted again
        tail = await source.open_image(record["id"], {}, offset=10, meta=meta)
        assert await read_all(tail) == data[10:]
    assert store.requests == []
    assert fg.count("GET", file_path(record["id"])) == 2
    assert metrics.registry.get_sample_value(
        "edgecache_upstream_errors_total", {"reason": "store_refused"}) == 1
    assert metrics.registry.get_sample_value(
        "edgecache_upstream_errors_total", {"reason": "store"}) == 0


async def test_a_refused_location_is_counted_once_per_fill_even_when_another_is_read(
    aiohttp_server: AiohttpServer, faulty_glance: FaultyGlance, caplog: pytest.LogCaptureFixture
) -> None:
    fg = faulty_glance
    data = os.urandom(1000)
    refused = await serve(aiohttp_server, bytes_answer(data))
    allowed = await serve(aiohttp_server, bytes_answer(data))
    record = fg.add_image(data, properties={"locations": [
        {"url": "http://AK:secret-in-url@" + refused.url.split("://", 1)[1] + "/img",
         "metadata": {}},
        {"url": allowed.url + "/img", "metadata": {}},
    ]})
    meta = ImageMeta.from_glance(record)
    metrics = Metrics()
    async with GlanceUpstream((fg.url,)) as upstream:
        allow = StoreAllowlist([allowed.url + "/"])
        source = DirectStoreSource(upstream, default_stores(upstream.session, allow=allow),
                                   metrics)
        for _ in range(2):  # two fills
            assert await read_all(await source.open_image(record["id"], {}, meta=meta)) == data
            await read_all(await source.open_image(record["id"], {}, offset=1, meta=meta))
    assert refused.requests == []
    assert len(allowed.requests) == 4
    assert fg.count("GET", file_path(record["id"])) == 0
    assert metrics.registry.get_sample_value(
        "edgecache_upstream_errors_total", {"reason": "store_refused"}) == 2
    assert caplog.text.count("store location refused") == 2
    assert "secret-in-url" not in caplog.text


async def test_with_direct_stores_and_no_allowlist_a_location_is_never_contacted(
    aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, faulty_glance: FaultyGlance,
    tmp_path: Path,
) -> None:
    """The daemon's own wiring: direct_stores = true, direct_store_allow left empty."""
    fg = faulty_glance
    data = os.urandom(2 * MiB + 5)
    store = await serve(aiohttp_server, bytes_answer(data))
    image_id = fg.add_image(data, properties={"locations": [
        {"url": store.url + "/img", "metadata": {}},
    ]})["id"]
    edge = await start_edgecache(aiohttp_client, tmp_path / "cache", (fg.url,),
                                 direct_stores=True)

    got = await edge.fetch(file_path(image_id))

    assert (got.status, got.error) == (200, None)
    assert hashlib.sha512(got.body).digest() == hashlib.sha512(data).digest()
    assert store.requests == []
    assert fg.count("GET", file_path(image_id)) == 1
    assert edge.sample("edgecache_upstream_errors_total", reason="store_refused") == 1
    await edge.settled()
    assert edge.data_bytes(image_id) == data


async def test_without_verification_no_store_is_read(
    aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, faulty_glance: FaultyGlance,
    tmp_path: Path,
) -> None:
    """``[cache] verify = false``: store bytes could never be checked, so Glance serves."""
    fg = faulty_glance
    data = os.urandom(MiB + 7)
    store = await serve(aiohttp_server, bytes_answer(data))
    image_id = fg.add_image(data, properties={"locations": [
        {"url": store.url + "/img", "metadata": {}},
    ]})["id"]
    allowed = settings(tmp_path / "cache", (fg.url,), direct_stores=True,
                       direct_store_allow=(store.url + "/",))
    unverified = dataclasses.replace(
        allowed, cache=dataclasses.replace(allowed.cache, verify=False))
    app = make_app(unverified, clock=SYSTEM)
    edge = Edge(client=await aiohttp_client(app), app=app, root=tmp_path / "cache", clock=None)

    got = await edge.fetch(file_path(image_id))

    assert (got.status, got.error, got.body) == (200, None, data)
    assert store.requests == []
    assert fg.count("GET", file_path(image_id)) == 1
