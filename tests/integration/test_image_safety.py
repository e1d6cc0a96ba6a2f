"""Real disk images in a real Glance, downloaded through edgecache by glanceclient and
openstacksdk: what Glance lets through but a hypervisor must not boot is refused here.

Glance 33 inspects uploads itself and refuses four of the unsafe images (a qcow2 with
a backing file or a data file, raw bytes labelled qcow2, a monolithicFlat VMDK);
``test_glance_refuses_these_itself`` shows it, and
tests/functional/test_image_safety.py serves them from a fault-injecting Glance. A
qcow2 labelled ``raw`` passes Glance's upload check (Glance reads ``raw`` as "any
bytes") and is the one Nova would boot as a raw disk: edgecache refuses it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

import glanceclient
import openstack
import pytest
import requests
from glanceclient import exc as glance_exc

from lab.edgecache import EdgecacheProcess, metric_value
from lab.glance import GlanceHTTPError, LocalGlance
from tests.support.disk_images import DiskImage

if TYPE_CHECKING:
    from openstack.image.v2._proxy import Proxy as ImageV2Proxy

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:`version` keyword is being deprecated:DeprecationWarning"),
]

TOKEN = "noauth"
GLANCE_REFUSES = ("backing-file", "data-file", "raw-as-qcow2", "vmdk-flat")
SAFE = ("clean-qcow2", "raw", "vmdk-stream", "iso-as-raw")


@pytest.fixture
def sdk(edgecache: EdgecacheProcess) -> Iterator[openstack.connection.Connection]:
    conn = openstack.connect(
        auth_type="none", auth={"endpoint": edgecache.url}, region_name="RegionOne",
        load_yaml_config=False, load_envvars=False, image_endpoint_override=edgecache.url,
    )
    try:
        yield conn
    finally:
        conn.close()


def images(conn: openstack.connection.Connection) -> ImageV2Proxy:
    return cast("ImageV2Proxy", conn.image)


def _upload(glance: LocalGlance, image: DiskImage) -> str:
    return str(glance.create_image(image.data, name=image.name,
                                   disk_format=image.disk_format)["id"])


def _cached(daemon: EdgecacheProcess) -> set[str]:
    listed = requests.get(f"{daemon.url}/v2/cache", timeout=10).json()
    return {entry["image_id"] for entry in listed["cached_images"]}


@pytest.mark.parametrize("name", GLANCE_REFUSES)
def test_glance_refuses_these_itself(
    real_glance: LocalGlance, disk_images: dict[str, DiskImage], name: str
) -> None:
    with pytest.raises(GlanceHTTPError) as refused:
        _upload(real_glance, disk_images[name])
    assert refused.value.status == 415


def test_a_qcow2_labelled_raw_is_refused_to_glanceclient_and_the_sdk(
    real_glance: LocalGlance, edgecache: EdgecacheProcess, disk_images: dict[str, DiskImage],
    sdk: openstack.connection.Connection,
) -> None:
    image_id = _upload(real_glance, disk_images["qcow2-as-raw"])
    path = f"/v2/images/{image_id}/file"
    before = metric_value(edgecache.url, "edgecache_image_safety_rejections_total",
                          reason="disk_format_mismatch")

    client = glanceclient.Client("2", endpoint=edgecache.url, token=TOKEN)
    with pytest.raises(glance_exc.HTTPForbidden) as refused:
        b"".join(client.images.data(image_id))
    assert "disk_format_mismatch" in str(refused.value)
    # The SDK does not look at a download's status: it hashes the 403's body, and the
    # mismatch is its error (as for Glance's own 403 on a download).
    with pytest.raises(openstack.exceptions.InvalidResponse, match="checksum mismatch"):
        images(sdk).download_image(images(sdk).get_image(image_id))
    direct = requests.get(f"{edgecache.url}{path}", timeout=10)
    assert direct.status_code == 403 and "disk_format_mismatch" in direct.text

    assert image_id not in _cached(edgecache)
    assert metric_value(edgecache.url, "edgecache_image_safety_rejections_total",
                        reason="disk_format_mismatch") == before + 1
    assert real_glance.count_requests("GET", path, at_least=1) == 1, "fetched once, refused"


@pytest.mark.parametrize("name", SAFE)
def test_safe_images_reach_both_clients_verified(
    real_glance: LocalGlance, edgecache: EdgecacheProcess, disk_images: dict[str, DiskImage],
    sdk: openstack.connection.Connection, name: str,
) -> None:
    image = disk_images[name]
    image_id = _upload(real_glance, image)
    expected = hashlib.sha512(image.data).hexdigest()

    client = glanceclient.Client("2", endpoint=edgecache.url, token=TOKEN)
    assert hashlib.sha512(b"".join(client.images.data(image_id))).hexdigest() == expected
    response = images(sdk).download_image(images(sdk).get_image(image_id), stream=True)
    assert hashlib.sha512(b"".join(response.iter_content(1 << 20))).hexdigest() == expected
    assert image_id in _cached(edgecache)
