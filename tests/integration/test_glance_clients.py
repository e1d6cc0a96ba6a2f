"""Real clients through edgecache to a real Glance: what Nova, the SDK and the CLI see.

Every download is checked against Glance's own ``os_hash_value`` (sha512), and the
``GET /v2/images/{id}/file`` requests Glance logged show whether edgecache answered
from its cache (docs/behaviour.md, docs/glance-wire.md).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import glanceclient
import openstack
import pytest
import requests
from keystoneauth1 import adapter, noauth, session

from lab.edgecache import EdgecacheProcess, metric_value
from lab.glance import LocalGlance, sha512_file
from lab.units import MiB

if TYPE_CHECKING:
    from glanceclient.v2.client import Client as GlanceClient
    from openstack.connection import Connection
    from openstack.image.v2._proxy import Proxy as ImageV2Proxy

    from tests.integration.conftest import ImageFactory

pytestmark = [
    pytest.mark.integration,
    # glanceclient.Client("2", endpoint=...) is how Nova-era code calls it; not our concern.
    pytest.mark.filterwarnings("ignore:`version` keyword is being deprecated:DeprecationWarning"),
]

TOKEN = "noauth"
#: The ``glance`` console script of the environment running the tests.
GLANCE_CLI = Path(sys.executable).with_name("glance")


def sha512_of(chunks: Iterable[bytes]) -> tuple[str, int]:
    """(hex sha512, byte count) of a body, hashed as it streams."""
    digest = hashlib.sha512()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def image_requests(daemon: EdgecacheProcess, result: str) -> float:
    return metric_value(daemon.url, "edgecache_image_requests_total", result=result)


def sdk_connection(url: str, *, override: bool) -> Connection:
    """openstacksdk without auth, isolated from any clouds.yaml or OS_* variables."""
    extra: dict[str, Any] = {"image_endpoint_override": url} if override else {}
    conn: Connection = openstack.connect(
        auth_type="none",
        auth={"endpoint": url},
        region_name="RegionOne",
        load_yaml_config=False,
        load_envvars=False,
        **extra,
    )
    return conn


def image_v2(conn: Connection) -> ImageV2Proxy:
    return cast("ImageV2Proxy", conn.image)


@pytest.fixture
def sdk(edgecache: EdgecacheProcess) -> Iterator[Connection]:
    conn = sdk_connection(edgecache.url, override=True)
    try:
        yield conn
    finally:
        conn.close()


# -------------------------------------------------------------- python-glanceclient


def test_glanceclient_download_miss_then_hit(
    glance_client: GlanceClient, edgecache: EdgecacheProcess, real_glance: LocalGlance,
    make_image: ImageFactory,
) -> None:
    image = make_image(8 * MiB)
    misses, hits = image_requests(edgecache, "miss"), image_requests(edgecache, "hit")

    # Nova's show(): GET /v2/images/{id} and GET /v2/schemas/image, passed through.
    shown = glance_client.images.get(image.id)
    assert (shown["id"], shown["status"], shown["size"]) == (image.id, "active", image.size)
    assert shown["os_hash_value"] == image.os_hash_value

    # Nova's download: images.data with do_checksum=True (glanceclient raises IOError
    # after the last chunk if the bytes do not hash to os_hash_value).
    body = glance_client.images.data(image.id)
    assert len(body) == image.size
    assert sha512_of(body) == (image.os_hash_value, image.size)
    assert real_glance.count_requests("GET", image.file_path, at_least=1) == 1
    assert image_requests(edgecache, "miss") == misses + 1

    # The hit, from a client that sends a global request id as Nova's does: the id
    # comes back on the response (docs/glance-wire.md#request-ids).
    global_id = f"req-{uuid.uuid4()}"
    nova_like = glanceclient.Client(
        "2", endpoint=edgecache.url, token=TOKEN, global_request_id=global_id
    )
    body = nova_like.images.data(image.id)
    assert len(body) == image.size
    assert sha512_of(body) == (image.os_hash_value, image.size)
    assert body.request_ids == [global_id]
    assert image_requests(edgecache, "hit") == hits + 1
    # A second upstream GET would be logged within this grace period: there is none.
    assert real_glance.count_requests("GET", image.file_path, at_least=2, timeout=1.0) == 1


# -------------------------------------------------------------------- openstacksdk


def test_openstacksdk_get_and_download(
    sdk: Connection, edgecache: EdgecacheProcess, real_glance: LocalGlance, make_image: ImageFactory
) -> None:
    image = make_image(4 * MiB)

    shown = image_v2(sdk).get_image(image.id)  # passthrough of GET /v2/images/{id}
    assert shown.id == image.id
    assert shown.status == "active"
    assert shown.size == image.size
    assert shown.checksum == image.checksum
    assert (shown.hash_algo, shown.hash_value) == ("sha512", image.os_hash_value)

    # The SDK verifies the hash itself (InvalidResponse on a mismatch) and we do too;
    # the first download is a miss, the second a hit: same headers, same bytes.
    for _ in ("miss", "hit"):
        response = image_v2(sdk).download_image(shown, stream=True)
        assert response.status_code == 200
        assert response.url == f"{edgecache.url}{image.file_path}"
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["Content-MD5"] == image.checksum
        assert int(response.headers["Content-Length"]) == image.size
        assert sha512_of(response.iter_content(MiB)) == (image.os_hash_value, image.size)
    assert real_glance.count_requests("GET", image.file_path, at_least=2, timeout=1.0) == 1


def test_version_discovery_finds_edgecache(
    edgecache: EdgecacheProcess, real_glance: LocalGlance, make_image: ImageFactory
) -> None:
    """No endpoint override: keystoneauth discovers the image API at edgecache's root."""
    image = make_image(2 * MiB)
    glance_discovery = (
        real_glance.count_requests("GET", "/"),
        real_glance.count_requests("GET", "/versions"),
    )

    # What Nova does without [glance] endpoint_override (get_ksa_adapter('image', ...)).
    sess = session.Session(auth=noauth.NoAuth(endpoint=edgecache.url))
    image_api = adapter.Adapter(
        sess, service_type="image", min_version="2.0", max_version="2.latest"
    )
    data = image_api.get_endpoint_data()
    assert data is not None
    assert data.url == f"{edgecache.url}/v2/"
    assert data.api_version is not None and data.api_version >= (2, 14)

    # The SDK without image_endpoint_override discovers the same URL and uses it.
    conn = sdk_connection(edgecache.url, override=False)
    try:
        assert conn.image.get_endpoint() == f"{edgecache.url}/v2/"
        shown = image_v2(conn).get_image(image.id)
        response = image_v2(conn).download_image(shown, stream=True)
        assert response.url == f"{edgecache.url}{image.file_path}"
        assert sha512_of(response.iter_content(MiB)) == (image.os_hash_value, image.size)
    finally:
        conn.close()

    # Discovery was answered by edgecache: Glance never saw it.
    assert (
        real_glance.count_requests("GET", "/"),
        real_glance.count_requests("GET", "/versions"),
    ) == glance_discovery
    assert real_glance.count_requests("GET", image.file_path, at_least=1) == 1


def test_clients_under_a_path_prefix(
    edgecache: EdgecacheProcess, real_glance: LocalGlance, make_image: ImageFactory
) -> None:
    """An endpoint such as http://host/image works too (docs/glance-wire.md#path-prefixes)."""
    image = make_image(1 * MiB)
    prefixed = f"{edgecache.url}/image"

    client = glanceclient.Client("2", endpoint=prefixed, token=TOKEN)
    assert sha512_of(client.images.data(image.id)) == (image.os_hash_value, image.size)
    assert image.id in {listed["id"] for listed in client.images.list()}

    conn = sdk_connection(prefixed, override=False)
    try:
        assert conn.image.get_endpoint() == f"{prefixed}/v2/"
        assert conn.image.get_image(image.id).hash_value == image.os_hash_value
    finally:
        conn.close()
    assert real_glance.count_requests("GET", image.file_path, at_least=1) == 1


# ------------------------------------------------------------------------ glance CLI


def glance_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``glance`` command against ``url``, with no OS_* variables from the caller."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OS_")}
    return subprocess.run(
        [str(GLANCE_CLI), "--os-image-url", url, "--os-auth-token", TOKEN, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_glance_cli_download_list_show(
    edgecache: EdgecacheProcess, real_glance: LocalGlance, make_image: ImageFactory, tmp_path: Path
) -> None:
    image = make_image(6 * MiB)
    out = tmp_path / "downloaded.bin"

    done = glance_cli(edgecache.url, "image-download", "--file", str(out), image.id)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size == image.size
    assert sha512_file(out) == image.os_hash_value
    assert real_glance.count_requests("GET", image.file_path, at_least=1) == 1

    done = glance_cli(edgecache.url, "image-list")
    assert done.returncode == 0, done.stderr
    assert image.id in done.stdout

    done = glance_cli(edgecache.url, "image-show", "--max-column-width", "200", image.id)
    assert done.returncode == 0, done.stderr
    rows = {
        cells[0]: cells[1]
        for line in done.stdout.splitlines()
        if len(cells := [cell.strip() for cell in line.strip("|").split("|")]) == 2
    }
    assert rows["id"] == image.id
    assert rows["status"] == "active"
    assert rows["size"] == str(image.size)
    assert rows["os_hash_value"] == image.os_hash_value


# ------------------------------------------------------------------ version documents


def test_version_documents_point_at_edgecache(edgecache: EdgecacheProcess) -> None:
    root = requests.get(f"{edgecache.url}/", timeout=10)
    listed = requests.get(f"{edgecache.url}/versions", timeout=10)

    assert root.status_code == 300
    assert listed.status_code == 200
    for response in (root, listed):
        assert response.headers["Content-Type"].split(";")[0] == "application/json"
        versions = response.json()["versions"]
        ids = {version["id"] for version in versions}
        assert {"v2.0", "v2.14"} <= ids  # v2.14: glanceclient's cache-* commands need it
        current = [version["id"] for version in versions if version["status"] == "CURRENT"]
        assert len(current) == 1
        for version in versions:
            hrefs = [link["href"] for link in version["links"] if link["rel"] == "self"]
            assert hrefs == [f"{edgecache.url}/v2/"], version
