"""The real-Glance harness itself: provisioning, image helpers, request counting, stop.

Everything else in the integration suite trusts these helpers, so they are checked
against a live Glance here.  The Glance venv is provisioned once under
default_state_root() (EDGECACHE_STATE_DIR, else <checkout>/.state) and reused.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from lab.glance import LocalGlance, ensure_glance_venv, sha512_file
from lab.venvs import default_state_root

pytestmark = pytest.mark.integration


def _proc_state(pid: int) -> str | None:
    """psutil's status of pid (running, sleeping, zombie, ...) or None once it is gone."""
    try:
        return str(psutil.Process(pid).status())
    except psutil.NoSuchProcess:
        return None


@pytest.fixture(scope="module")
def glance_venv() -> Path:
    return ensure_glance_venv(default_state_root())


@pytest.fixture(scope="module")
def glance(glance_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGlance]:
    with LocalGlance(tmp_path_factory.mktemp("glance-noauth"), glance_venv) as instance:
        yield instance


def test_upload_download_and_count(glance: LocalGlance, tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(3 << 20))

    image = glance.create_image(blob, name="rand-3m", edgecache_test="yes")

    assert image["status"] == "active"
    assert image["size"] == 3 << 20
    assert image["os_hash_value"] == sha512_file(blob)
    assert image["edgecache_test"] == "yes"

    path = f"/v2/images/{image['id']}/file"
    assert glance.count_requests("GET", path) == 0
    resp = glance.request("GET", path)
    assert resp.status == 200
    assert hashlib.sha512(resp.body).hexdigest() == image["os_hash_value"]
    assert glance.count_requests("GET", path, at_least=1) == 1

    # The query string is not part of the counted path; other methods are not counted.
    assert glance.request("GET", path + "?x=1").status == 200
    assert glance.count_requests("get", path, at_least=2) == 2
    assert glance.count_requests("PUT", path) == 1


def test_queued_image_has_no_data(glance: LocalGlance) -> None:
    image = glance.create_queued_image()

    assert image["status"] == "queued"
    resp = glance.request("GET", f"/v2/images/{image['id']}/file")
    assert resp.status == 204
    assert resp.body == b""


def test_deactivate_and_delete(glance: LocalGlance) -> None:
    image = glance.create_image(b"x" * 1000, name="small")
    image_id = str(image["id"])
    path = f"/v2/images/{image_id}/file"

    glance.deactivate_image(image_id)
    assert glance.get_image(image_id)["status"] == "deactivated"
    assert glance.request("GET", path).status == 403

    glance.reactivate_image(image_id)
    assert glance.request("GET", path).body == b"x" * 1000

    glance.delete_image(image_id)
    assert glance.request("GET", f"/v2/images/{image_id}").status == 404
    assert glance.request("GET", path).status == 404


def test_second_instance_with_cache_then_stop(
    glance: LocalGlance, glance_venv: Path, tmp_path: Path
) -> None:
    second = LocalGlance(
        tmp_path / "glance-caching",
        glance_venv,
        flavor="caching",
        processes=1,
        threads=2,
        close_connections=True,
    )
    with second:
        assert second.port not in (0, glance.port)
        assert second.url == f"http://127.0.0.1:{second.port}"
        assert glance.request("GET", "/").status == 300  # both serve at once

        data = os.urandom(256 << 10)
        image = second.create_image(data)
        resp = second.request("GET", f"/v2/images/{image['id']}/file")
        assert resp.status == 200
        assert resp.body == data
        assert resp.headers.get("connection") == "close"
        # Glance's cache-miss response is close-delimited: no Content-Length.
        assert "content-length" not in resp.headers

        master = second.pid
        pids = second.process_group()
        assert master is not None
        assert master in pids
        assert len(pids) == 2  # master + 1 worker

    assert second.pid is None
    assert second.process_group() == []
    assert _proc_state(master) is None  # exited and reaped by stop()
    for pid in pids:
        assert _proc_state(pid) in (None, psutil.STATUS_ZOMBIE)
    second.stop()  # idempotent

    # A restart on the same state_dir keeps port and data (no second db_sync).
    with second:
        assert second.get_image(str(image["id"]))["status"] == "active"
    assert second.process_group() == []
