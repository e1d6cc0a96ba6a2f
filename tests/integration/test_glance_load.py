"""Many readers and one big writer through edgecache, with a real Glance behind it.

* 20 concurrent cold downloads of one image cost Glance exactly one
  ``GET /v2/images/{id}/file`` (docs/behaviour.md#single-flight) and every reader gets
  the whole, verified image.
* A 256 MiB snapshot upload through edgecache (glanceclient ``images.upload``, as
  Nova's snapshot does) lands intact in Glance while edgecache's RSS stays small:
  the body is streamed, never buffered (docs/behaviour.md#http-surface).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import glanceclient
import psutil
import pytest

from lab.edgecache import EdgecacheProcess, metric_value
from lab.glance import LocalGlance
from lab.units import MiB

if TYPE_CHECKING:
    from glanceclient.v2.client import Client as GlanceClient

    from tests.integration.conftest import ImageFactory

pytestmark = [
    pytest.mark.integration,
    # glanceclient.Client("2", endpoint=...) is how Nova-era code calls it; not our concern.
    pytest.mark.filterwarnings("ignore:`version` keyword is being deprecated:DeprecationWarning"),
]

TOKEN = "noauth"
READERS = 20
COLD_IMAGE_SIZE = 64 * MiB
UPLOAD_SIZE = 256 * MiB
RSS_LIMIT = 150 * MiB
RSS_PERIOD = 0.05


def image_requests(daemon: EdgecacheProcess) -> dict[str, float]:
    return {
        result: metric_value(daemon.url, "edgecache_image_requests_total", result=result)
        for result in ("hit", "miss", "coalesced", "error")
    }


def test_concurrent_cold_downloads_share_one_upstream_get(
    edgecache: EdgecacheProcess, real_glance: LocalGlance, make_image: ImageFactory
) -> None:
    image = make_image(COLD_IMAGE_SIZE)
    before = image_requests(edgecache)
    start = threading.Barrier(READERS)

    def read() -> tuple[str, int]:
        # One client per thread, as each Nova request builds its own.
        client: GlanceClient = glanceclient.Client("2", endpoint=edgecache.url, token=TOKEN)
        start.wait(timeout=30)
        body = client.images.data(image.id)  # do_checksum=True: raises on a bad hash
        assert len(body) == image.size
        digest = hashlib.sha512()
        size = 0
        for chunk in body:
            digest.update(chunk)
            size += len(chunk)
        return digest.hexdigest(), size

    with ThreadPoolExecutor(max_workers=READERS) as pool:
        futures = [pool.submit(read) for _ in range(READERS)]
        results = [future.result(timeout=120) for future in futures]

    assert results == [(image.os_hash_value, image.size)] * READERS
    # Another upstream GET would show up in Glance's log within this grace period.
    assert real_glance.count_requests("GET", image.file_path, at_least=2, timeout=1.0) == 1
    after = image_requests(edgecache)
    assert after["miss"] - before["miss"] == 1
    # Readers really overlapped the fill (the rest found the committed image).
    assert after["coalesced"] - before["coalesced"] >= 1, (before, after)
    assert after["coalesced"] + after["hit"] - before["coalesced"] - before["hit"] == READERS - 1
    assert after["error"] == before["error"]


def vm_rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes."""
    return int(psutil.Process(pid).memory_info().rss)


class RssSampler:
    """Samples a process's RSS every ``period`` seconds in a thread, keeping the peak."""

    def __init__(self, pid: int, period: float = RSS_PERIOD) -> None:
        self.pid = pid
        self.period = period
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(vm_rss(self.pid))
            self._stop.wait(self.period)

    @property
    def peak(self) -> int:
        return max(self.samples)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def upload_file(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A 256 MiB file of random bytes and its sha512; removed afterwards."""
    path = tmp_path / "snapshot.bin"
    digest = hashlib.sha512()
    with path.open("wb") as fh:
        for _ in range(UPLOAD_SIZE // (4 * MiB)):
            block = os.urandom(4 * MiB)
            digest.update(block)
            fh.write(block)
    try:
        yield path, digest.hexdigest()
    finally:
        path.unlink(missing_ok=True)


def test_upload_is_streamed_through(
    glance_client: GlanceClient, edgecache: EdgecacheProcess, real_glance: LocalGlance,
    upload_file: tuple[Path, str],
) -> None:
    path, sha512 = upload_file
    created = glance_client.images.create(
        name="snapshot-through-edgecache", disk_format="raw", container_format="bare"
    )
    image_id = str(created["id"])
    assert created["status"] == "queued"

    started = time.monotonic()
    with RssSampler(edgecache.pid) as rss, path.open("rb") as data:
        glance_client.images.upload(image_id, data, image_size=UPLOAD_SIZE)
    elapsed = time.monotonic() - started

    uploaded = real_glance.get_image(image_id)
    assert uploaded["status"] == "active"
    assert uploaded["size"] == UPLOAD_SIZE
    assert uploaded["os_hash_value"] == sha512
    assert real_glance.count_requests("PUT", f"/v2/images/{image_id}/file", at_least=1) == 1
    # The sampler really watched the upload (at 50 ms, a 256 MiB upload gives several).
    assert len(rss.samples) >= 3, (len(rss.samples), elapsed)
    assert rss.peak < RSS_LIMIT, (
        f"edgecache peaked at {rss.peak / MiB:.1f} MiB RSS during a "
        f"{UPLOAD_SIZE // MiB} MiB upload ({elapsed:.1f} s)"
    )
    real_glance.delete_image(image_id)
