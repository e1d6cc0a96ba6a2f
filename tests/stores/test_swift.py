"""Swift locations as glance_store writes them, read from a real Swift (direct store reads).

The contract suite (test_contract.py) covers the tempauth v1 handshake; these
tests cover the location formats, the ``[upstream_auth]`` path and a fill
whose bytes come from Swift rather than Glance. The Keystone path runs against
the same tempauth Swift: :class:`FakeKeystone` stands in for a keystoneauth1
session and hands out a tempauth token, which Swift accepts in ``X-Auth-Token``
exactly as it would a Keystone one.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import cast

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from edgecache.errors import NotFound, UpstreamError
from edgecache.model import ImageBody
from edgecache.upstream.stores.allow import StoreAllowlist
from edgecache.upstream.stores.swift import KeystoneSession, SwiftStore, parse_location
from lab.swift import KEY, LocalSwift
from lab.units import MiB
from tests.functional import file_path, start_edgecache
from tests.support.faultyglance import FaultyGlance


async def read_all(body: ImageBody) -> bytes:
    try:
        return b"".join([chunk async for chunk in body.chunks()])
    finally:
        body.close()


class FakeKeystone:
    """The three keystoneauth1 Session calls SwiftStore makes, backed by tempauth."""

    def __init__(self, swift: LocalSwift, *, first_token: str | None = None) -> None:
        self.swift = swift
        self.first_token = first_token
        self.invalidations = 0
        self.endpoint_calls: list[dict[str, object]] = []

    def get_token(self) -> str:
        if self.first_token is not None and not self.invalidations:
            return self.first_token
        return self.swift.authenticate()[0]

    def get_endpoint(self, **kwargs: object) -> str:
        self.endpoint_calls.append(kwargs)
        return self.swift.storage_url

    def invalidate(self) -> bool:
        self.invalidations += 1
        return True


def as_session(fake: FakeKeystone) -> KeystoneSession:
    return cast(KeystoneSession, fake)


def swift_only(swift: LocalSwift) -> StoreAllowlist:
    """The local Swift's proxy (auth and storage), nothing else."""
    return StoreAllowlist([swift.url + "/"])


def put(swift: LocalSwift, data: bytes) -> str:
    name = uuid.uuid4().hex
    swift.put_object("images", name, data)
    return name


def test_glance_store_location_formats() -> None:
    single = parse_location("swift+https://svc%3Aglance:s3cret@keystone:5000/v3/glance/img-1")
    assert (single.base, single.container, single.obj) == ("https://keystone:5000/v3",
                                                           "glance", "img-1")
    assert (single.user, single.key, single.v1_auth) == ("svc:glance", "s3cret", False)
    assert "s3cret" not in single.display and "svc" not in single.display

    unquoted = parse_location("swift+http://test:tester:testing@h:8080/auth/v1.0/c/o")
    assert (unquoted.user, unquoted.key, unquoted.v1_auth) == ("test:tester", "testing", True)
    assert unquoted.base == "http://h:8080/auth/v1.0"

    multi = parse_location("swift+https://swift.example:443/v1/AUTH_abc/glance/img-2")
    assert (multi.base, multi.user, multi.v1_auth) == ("https://swift.example:443/v1/AUTH_abc",
                                                       None, False)
    assert multi.object_url(multi.base) == "https://swift.example:443/v1/AUTH_abc/glance/img-2"

    assert parse_location("swift://u:k@auth.example/v2.0/c/o").base == "https://auth.example/v2.0"
    for bad in ("swift+http://u:k@host/only-one", "swift+http:///c/o", "swift+config://ref/c/o"):
        with pytest.raises(UpstreamError):
            parse_location(bad)


async def test_a_record_whose_location_is_in_swift_is_filled_from_swift(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, local_swift: LocalSwift,
    tmp_path: Path,
) -> None:
    fg = faulty_glance
    data = os.urandom(3 * MiB + 11)
    location = local_swift.location("images", put(local_swift, data))
    image_id = fg.add_image(data, properties={"locations": [{"url": location, "metadata": {}}]})[
        "id"
    ]
    edge = await start_edgecache(aiohttp_client, tmp_path / "cache", (fg.url,),
                                 direct_stores=True,
                                 direct_store_allow=(local_swift.url + "/",))

    got = await edge.fetch(file_path(image_id))

    assert (got.status, got.error, got.body) == (200, None, data)
    assert fg.count("GET", file_path(image_id)) == 0  # the bytes came from Swift
    assert fg.count("GET", f"/v2/images/{image_id}") >= 1  # the verdict came from Glance
    assert edge.sample("edgecache_upstream_errors_total", reason="store") == 0
    await edge.settled()
    assert edge.data_bytes(image_id) == data


async def test_upstream_auth_reads_multi_tenant_and_catalog_locations(
    local_swift: LocalSwift,
) -> None:
    swift = local_swift
    data = os.urandom(MiB + 3)
    name = put(swift, data)
    keystone = FakeKeystone(swift)
    async with aiohttp.ClientSession() as session:
        store = SwiftStore(session, as_session(keystone), allow=swift_only(swift),
                           interface="internal")
        multi = f"swift+http://{swift.storage_url.split('://', 1)[1]}/images/{name}"
        assert await read_all(await store.open(multi, 5)) == data[5:]
        # the storage URL is in the location; the catalog only says it is the session's Swift
        assert {c["interface"] for c in keystone.endpoint_calls} == {"public", "internal",
                                                                      "admin"}
        keystone.endpoint_calls.clear()

        catalog = f"swift+http://glance:pw@127.0.0.1:5000/v3/images/{name}"
        assert await read_all(await store.open(catalog)) == data
        assert keystone.endpoint_calls[0] == {
            "service_type": "object-store", "interface": "internal", "region_name": None
        }
        with pytest.raises(NotFound):
            await store.open(f"swift+http://glance:pw@127.0.0.1:5000/v3/images/{name}-gone")

        without = SwiftStore(session, allow=swift_only(swift))
        with pytest.raises(UpstreamError, match="upstream_auth") as err:
            await without.open(multi)
        assert err.value.reason == "store"


async def test_a_rejected_token_is_renewed_once(local_swift: LocalSwift) -> None:
    swift = local_swift
    data = os.urandom(1000)
    name = put(swift, data)
    keystone = FakeKeystone(swift, first_token="AUTH_tk_expired")
    async with aiohttp.ClientSession() as session:
        store = SwiftStore(session, as_session(keystone), allow=swift_only(swift))
        multi = f"swift+http://{swift.storage_url.split('://', 1)[1]}/images/{name}"
        assert await read_all(await store.open(multi)) == data
        assert keystone.invalidations == 1

        v1 = SwiftStore(session, allow=swift_only(swift))
        location = swift.location("images", name)
        assert await read_all(await v1.open(location)) == data
        # the cached v1 token goes stale (as after a proxy restart): one re-handshake
        v1._v1_tokens = {k: (s, "AUTH_tk_stale") for k, (s, _) in v1._v1_tokens.items()}
        assert await read_all(await v1.open(location, 10)) == data[10:]


async def test_credentials_stay_out_of_errors_and_logs(
    local_swift: LocalSwift, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = local_swift.location("images", "x").replace(f":{KEY}@", ":not-the-key@")
    async with aiohttp.ClientSession() as session:
        store = SwiftStore(session, allow=swift_only(local_swift))
        with pytest.raises(UpstreamError) as err:
            await store.open(wrong)
        assert err.value.reason == "store"
        assert await read_all(await store.open(
            local_swift.location("images", put(local_swift, b"ok")))) == b"ok"
    assert "not-the-key" not in str(err.value) and "tester" not in str(err.value)
    assert KEY not in caplog.text and "not-the-key" not in caplog.text
