"""``edgecache serve`` on a small, full disk in front of a real Glance: no caller fails.

docs/behaviour.md#a-full-or-failing-disk. The cache directory is a 16 MiB tmpfs
mounted for the test (the suite runs as root); the daemon's own process meets the
kernel's ENOSPC. Clients are plain HTTP, reading every body to its end: a cut one
raises (``http.client.IncompleteRead``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from lab.edgecache import EdgecacheProcess, metric_value
from lab.glance import LocalGlance
from lab.polling import wait_until
from lab.units import KiB, MiB
from tests.operator.support import download, request
from tests.support.tmpfs import fill_up, tmpfs

if TYPE_CHECKING:
    from tests.integration.conftest import ImageFactory

DISK = 16 * MiB


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", DISK) as root:
        yield root


def _three_at_once(url: str, image_id: str) -> list[tuple[str, int, float]]:
    with ThreadPoolExecutor(3) as pool:
        return list(pool.map(lambda _: download(url, image_id), range(3)))


def test_a_full_disk_never_fails_a_caller_of_the_daemon(
    small_disk: Path, real_glance: LocalGlance, make_image: ImageFactory, tmp_path: Path
) -> None:
    big, middle, small = make_image(24 * MiB), make_image(8 * MiB), make_image(MiB)
    # stall_time 8: housekeeping (and its look at the free space) every 2 s
    with EdgecacheProcess(
        tmp_path / "edge", glance_endpoints=[real_glance.url], max_size="1G",
        cache_dir=small_disk, stall_time=8, options={"prefetch": {"max_rate": "256K"}},
    ) as edge:
        # Larger than the whole disk, though max_size would take it: passed through.
        for digest, count, _ in _three_at_once(edge.url, big.id):
            assert (digest, count) == (big.os_hash_value, big.size)
        assert metric_value(edge.url, "edgecache_cache_admissions_refused_total",
                            reason="disk_space") == 3
        assert os.listdir(edge.data_dir) == []

        # The disk fills up behind the daemon's back during a (paced) fill; three
        # callers join it, and each gets the whole image all the same.
        assert request(edge.url, "PUT", f"/v2/cache/{middle.id}")[0] == 202
        wait_until(lambda: _partial_bytes(edge) >= MiB, "the prefetch under way")
        filler = fill_up(small_disk, leave=512 * KiB)
        for digest, count, _ in _three_at_once(edge.url, middle.id):
            assert (digest, count) == (middle.os_hash_value, middle.size)
        assert metric_value(edge.url, "edgecache_cache_disk_errors_total", op="write") == 1
        assert metric_value(edge.url, "edgecache_image_requests_total", result="error") == 0
        wait_until(lambda: not os.listdir(edge.incomplete_dir), "the partial removed")
        assert os.listdir(edge.data_dir) == []

        # Room again: the daemon caches again.
        filler.unlink()

        def small_is_cached() -> bool:
            assert download(edge.url, small.id)[0] == small.os_hash_value
            return small.id in os.listdir(edge.data_dir)

        wait_until(small_is_cached, "a small image cached once there is room")
        assert metric_value(edge.url, "edgecache_image_requests_total", result="error") == 0


def _partial_bytes(edge: EdgecacheProcess) -> int:
    total = 0
    for name in os.listdir(edge.incomplete_dir):
        with contextlib.suppress(FileNotFoundError):
            total += os.stat(edge.incomplete_dir / name).st_size
    return total
