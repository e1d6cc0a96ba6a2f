"""Glance's own verdicts reach the client through edgecache unchanged.

Images without data answer 204, deactivated ones 403 (the local Glance's policy
refuses them, as it does for non-admins), unknown ids 404; deleting an image
through edgecache purges its cached copy (docs/glance-wire.md#metadata-passthrough).

See docs/glance-wire.md#image-data-statuses.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import TYPE_CHECKING

import pytest
import requests
from glanceclient import exc as glance_exc

from lab.edgecache import EdgecacheProcess
from lab.glance import LocalGlance
from lab.polling import wait_until
from lab.units import MiB

if TYPE_CHECKING:
    from glanceclient.v2.client import Client as GlanceClient

    from tests.integration.conftest import ImageFactory

pytestmark = [
    pytest.mark.integration,
    # glanceclient.Client("2", endpoint=...) is how Nova-era code calls it; not our concern.
    pytest.mark.filterwarnings("ignore:`version` keyword is being deprecated:DeprecationWarning"),
]

#: Longest a reused answer can take to expire: the daemon's auth_cache_ttl
#: (conftest.AUTH_CACHE_TTL) with room for a busy machine.
AUTH_CACHE_EXPIRY = 3.0
HEADERS = {"X-Auth-Token": "noauth"}


def download(client: GlanceClient, image_id: str) -> str:
    """images.data() as Nova uses it, hashed to the end (glanceclient verifies too)."""
    digest = hashlib.sha512()
    for chunk in client.images.data(image_id):
        digest.update(chunk)
    return digest.hexdigest()


def full_downloads(glance: LocalGlance, path: str) -> int:
    """GETs of ``path`` that Glance answered with the whole image (200)."""
    return sum(
        1 for record in glance.request_log()
        if record.method == "GET" and record.path == path and record.status == 200
    )


def refused(edgecache: EdgecacheProcess, path: str, sha512: str) -> bool:
    """Whether edgecache answers a GET of ``path`` with 403 (else the whole image)."""
    answer = requests.get(f"{edgecache.url}{path}", headers=HEADERS, timeout=10)
    assert answer.status_code in (200, 403), answer.status_code
    assert answer.status_code == 403 or hashlib.sha512(answer.content).hexdigest() == sha512
    return answer.status_code == 403


def test_queued_image_answers_204(
    glance_client: GlanceClient, edgecache: EdgecacheProcess, real_glance: LocalGlance
) -> None:
    image_id = str(real_glance.create_queued_image()["id"])

    raw = requests.get(f"{edgecache.url}/v2/images/{image_id}/file", headers=HEADERS, timeout=10)
    assert raw.status_code == 204
    assert raw.content == b""
    assert raw.headers.get("x-openstack-request-id", "").startswith("req-")

    # glanceclient turns the 204 into a RequestIdProxy around None; Nova checks
    # `image_chunks.wrapped is None` and raises ImageUnacceptable("no data").
    chunks = glance_client.images.data(image_id)
    assert chunks.wrapped is None
    assert not list((edgecache.data_dir).glob(f"{image_id}*"))


def test_deactivated_image_answers_403(
    glance_client: GlanceClient, edgecache: EdgecacheProcess, real_glance: LocalGlance,
    make_image: ImageFactory,
) -> None:
    image = make_image(1 * MiB)
    real_glance.deactivate_image(image.id)

    raw = requests.get(f"{edgecache.url}{image.file_path}", headers=HEADERS, timeout=10)
    assert raw.status_code == 403
    assert "download_image" in raw.text  # Glance's own message, relayed
    with pytest.raises(glance_exc.HTTPForbidden):
        glance_client.images.data(image.id)
    assert not (edgecache.data_dir / image.id).exists()


def test_cached_image_answers_403_once_deactivated(
    glance_client: GlanceClient, edgecache: EdgecacheProcess, real_glance: LocalGlance,
    make_image: ImageFactory,
) -> None:
    """A hit is no exception (a deactivated image is a 403): the copy is dropped, not served."""
    image = make_image(2 * MiB)
    assert download(glance_client, image.id) == image.os_hash_value
    cached = edgecache.data_dir / image.id
    wait_until(cached.exists, f"{cached} to be committed")

    real_glance.deactivate_image(image.id)
    # edgecache may reuse Glance's "active" until it expires (served from the copy), no later.
    wait_until(lambda: refused(edgecache, image.file_path, image.os_hash_value),
               "the deactivation to reach edgecache", AUTH_CACHE_EXPIRY, interval=0.1)

    with pytest.raises(glance_exc.HTTPForbidden):
        glance_client.images.data(image.id)
    wait_until(lambda: not cached.exists(), f"{cached} to be evicted")

    # Reactivated, it downloads again (from Glance: the copy is gone).
    real_glance.reactivate_image(image.id)
    assert download(glance_client, image.id) == image.os_hash_value  # refusals aren't reused
    wait_until(lambda: full_downloads(real_glance, image.file_path) >= 2, "the second fill")
    assert full_downloads(real_glance, image.file_path) == 2


def test_unknown_image_answers_404(
    glance_client: GlanceClient, edgecache: EdgecacheProcess
) -> None:
    image_id = str(uuid.uuid4())

    raw = requests.get(f"{edgecache.url}/v2/images/{image_id}/file", headers=HEADERS, timeout=10)
    assert raw.status_code == 404
    assert image_id in raw.text
    assert raw.headers["Content-Type"]

    with pytest.raises(glance_exc.HTTPNotFound) as caught:
        glance_client.images.data(image_id)
    assert f"No image found with ID {image_id}" in str(caught.value)


def test_delete_through_edgecache_purges_the_cached_copy(
    glance_client: GlanceClient, edgecache: EdgecacheProcess, real_glance: LocalGlance,
    make_image: ImageFactory,
) -> None:
    image = make_image(3 * MiB)
    assert download(glance_client, image.id) == image.os_hash_value
    cached = edgecache.data_dir / image.id
    wait_until(cached.exists, f"{cached} to be committed")
    assert cached.stat().st_size == image.size

    glance_client.images.delete(image.id)

    assert real_glance.count_requests("DELETE", f"/v2/images/{image.id}", at_least=1) == 1
    wait_until(lambda: not cached.exists(), f"{cached} to be removed")
    raw = requests.get(f"{edgecache.url}{image.file_path}", headers=HEADERS, timeout=10)
    assert raw.status_code == 404
    with pytest.raises(glance_exc.HTTPNotFound):
        glance_client.images.data(image.id)
