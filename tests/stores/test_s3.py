"""The ``s3`` store backend beyond the shared contract: Glance's URLs, errors, a fill from S3.

The contract suite (test_contract.py) already runs against moto's S3 server;
this adds what is particular to S3 (see lab/motos3.py for what moto
does not cover).
"""

from __future__ import annotations

import hashlib
import logging
import os

import pytest
from pytest_aiohttp import AiohttpClient

from edgecache.errors import NotFound, UpstreamError
from edgecache.upstream.stores import StoreRegistry
from edgecache.upstream.stores.allow import StoreAllowlist
from edgecache.upstream.stores.s3 import S3Location, S3Store
from lab.motos3 import SECRET_KEY, MotoS3
from lab.units import MiB
from tests.functional import file_path, start_edgecache
from tests.support.faultyglance import FaultyGlance

pytest.importorskip("aiobotocore", reason="the s3 extra is not installed")


def everywhere(server: MotoS3) -> StoreAllowlist:
    """Every bucket of the moto server."""
    return StoreAllowlist([server.endpoint + "/"])



@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://AK:se/cr+et@s3.example.net/glance/0b6f-id",
         ("http://s3.example.net", "glance", "0b6f-id", "AK", "se/cr+et")),
        ("s3+http://AK:SK@10.0.0.5:7480/glance/id",
         ("http://10.0.0.5:7480", "glance", "id", "AK", "SK")),
        ("s3+https://AK:SK@rgw.example.net/prefix/glance/id",
         ("https://rgw.example.net/prefix", "glance", "id", "AK", "SK")),
        ("s3+https://s3.eu-west-1.amazonaws.com/glance/id",
         ("https://s3.eu-west-1.amazonaws.com", "glance", "id", None, None)),
    ],
)
def test_glance_s3_locations_parse(url: str, expected: tuple[object, ...]) -> None:
    where = S3Location.parse(url)
    assert (where.endpoint, where.bucket, where.key, where.access_key,
            where.secret_key) == expected
    assert "@" not in where.redacted()


def test_the_signing_region_follows_an_aws_host() -> None:
    assert S3Location.parse("s3+https://s3.eu-west-1.amazonaws.com/b/k").region == "eu-west-1"
    assert S3Location.parse("s3://A:S@rgw.local:7480/b/k").region == "us-east-1"


@pytest.mark.parametrize("url", ["s3://A:S@hostonly/key", "s3://nocolon@h/b/k",
                                 "s3://A:S@https://h/b/k", "s3:/h/b/k"])
def test_malformed_locations_are_store_errors_without_the_secret(url: str) -> None:
    with pytest.raises(UpstreamError) as caught:
        S3Location.parse(url)
    assert caught.value.reason == "store"
    assert ":S@" not in str(caught.value)


def test_default_stores_reads_s3_with_the_extra() -> None:
    from edgecache.upstream.stores import default_stores

    registry = default_stores(None, allow=StoreAllowlist())  # type: ignore[arg-type]
    assert isinstance(registry, StoreRegistry)
    assert all(registry.readable(f"{s}://A:S@h/b/k") for s in ("s3", "s3+http", "s3+https"))


async def test_a_missing_bucket_is_not_found(s3_server: MotoS3) -> None:
    with pytest.raises(NotFound):
        await S3Store(allow=everywhere(s3_server)).open(s3_server.url("no-such-bucket", "k"))


async def test_an_unreachable_service_is_a_store_error_that_hides_the_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="edgecache")
    with pytest.raises(UpstreamError) as caught:
        await S3Store(allow=StoreAllowlist(["http://127.0.0.1:9/"]), connect_timeout=1).open(f"s3://AK:{SECRET_KEY}@127.0.0.1:9/images/k")
    assert caught.value.reason == "store"
    assert SECRET_KEY not in str(caught.value)
    assert SECRET_KEY not in caplog.text


async def test_an_offset_past_the_end_is_a_store_error(s3_server: MotoS3) -> None:
    url = s3_server.put("images", "short", b"0123456789")
    with pytest.raises(UpstreamError) as caught:
        await S3Store(allow=everywhere(s3_server)).open(url, 10)
    assert caught.value.reason == "store"


async def test_a_fill_reads_an_s3_location_and_not_glance(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, s3_server: MotoS3,
    tmp_path: os.PathLike[str], caplog: pytest.LogCaptureFixture,
) -> None:
    """The record (from FaultyGlance, standing in for Glance) names an S3 object: the
    edge's fill streams it from moto, verifies it against the record's hash, and
    never asks Glance for /file."""
    from pathlib import Path

    caplog.set_level(logging.DEBUG)
    fg = faulty_glance
    data = os.urandom(5 * MiB + 3)
    url = s3_server.put("images", hashlib.sha256(data).hexdigest(), data)
    image = fg.add_image(data, properties={"locations": [{"url": url, "metadata": {}}]})
    image_id = image["id"]
    edge = await start_edgecache(aiohttp_client, Path(tmp_path) / "cache", (fg.url,),
                                 direct_stores=True,
                                 direct_store_allow=(s3_server.endpoint + "/",))

    got = await edge.fetch(file_path(image_id))

    assert (got.status, got.error) == (200, None)
    assert hashlib.sha512(got.body).hexdigest() == image["os_hash_value"]
    assert fg.count("GET", file_path(image_id)) == 0
    assert edge.sample("edgecache_upstream_errors_total", reason="store") == 0
    await edge.settled()
    assert edge.data_bytes(image_id) == data
    assert SECRET_KEY not in caplog.text
