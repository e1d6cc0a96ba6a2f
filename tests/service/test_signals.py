"""SIGTERM drains, SIGHUP reloads (docs/behaviour.md#running-it), on a daemon process.

SIGTERM: the listening socket closes at once (new connections are refused)
while a running download finishes with its verified bytes, and the process exits
0; past ``shutdown_timeout`` a download still running is cut. SIGHUP: a smaller
``[cache] max_size`` evicts at once; ``debug`` changes the log level live.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.edgecache import EdgecacheProcess
from lab.polling import wait_until
from lab.units import MiB
from tests.service import Download, scrape, wait_metric
from tests.support.faultyglance import Fault, FaultyGlance


@pytest.fixture
def glance() -> Iterator[FaultyGlance]:
    with FaultyGlance() as server:
        yield server


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def test_sigterm_lets_a_running_download_finish_and_refuses_new_connections(
    glance: FaultyGlance, tmp_path: Path
) -> None:
    # 4 MiB at 128 KiB every 0.1 s: about 3 s of download.
    image = glance.add_image(
        os.urandom(4 * MiB), fault=Fault(trickle_chunk=128 * 1024, trickle_delay=0.1)
    )
    options = {"DEFAULT": {"shutdown_timeout": "30"}}
    with EdgecacheProcess(
        tmp_path / "edgecache", glance_endpoints=[glance.url], options=options
    ) as daemon:
        download = Download(f"{daemon.url}/v2/images/{image['id']}/file").start()
        assert download.first_byte.wait(10)

        daemon.signal(signal.SIGTERM)
        wait_until(lambda: refuses_connections(daemon.port), "the listening socket to close", 5)
        assert not download.done.is_set(), "the download should still be running"
        assert daemon.running

        download.wait(30)
        assert (download.status, download.error) == (200, None)
        assert download.size == image["size"]
        assert download.sha512 == image["os_hash_value"]
        assert daemon.wait(30) == 0
        log = daemon.log_text()
    assert "stopping: closing the listening socket; 1 fills in progress" in log
    assert f"committed image {image['id']}" in log  # the verified fill was kept
    assert (daemon.data_dir / image["id"]).stat().st_size == image["size"]


def test_sigterm_cuts_what_is_still_running_at_the_deadline(
    glance: FaultyGlance, tmp_path: Path
) -> None:
    image = glance.add_image(os.urandom(4 * MiB), fault=Fault(stall_after=MiB))
    options = {"DEFAULT": {"shutdown_timeout": "1"}}
    with EdgecacheProcess(
        tmp_path / "edgecache", glance_endpoints=[glance.url], options=options
    ) as daemon:
        download = Download(f"{daemon.url}/v2/images/{image['id']}/file").start()
        assert download.first_byte.wait(10)
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
        elapsed = time.monotonic() - started
        download.wait(10)
    assert 0.9 <= elapsed < 8, elapsed
    assert download.error is not None  # cut, never a clean short end
    assert download.size < image["size"]
    assert list(daemon.incomplete_dir.iterdir()) == []  # the abandoned partial is gone
    assert not (daemon.data_dir / image["id"]).exists()


def test_sighup_with_a_smaller_max_size_evicts_at_once(
    glance: FaultyGlance, tmp_path: Path
) -> None:
    size = 2 * MiB
    images = [glance.add_image(os.urandom(size)) for _ in range(3)]
    with EdgecacheProcess(
        tmp_path / "edgecache", glance_endpoints=[glance.url], max_size="8M"
    ) as daemon:
        for image in [*images, images[0]]:  # the first is used again: the second is the LRU
            got = Download(f"{daemon.url}/v2/images/{image['id']}/file").start().wait()
            assert (got.status, got.sha512) == (200, image["os_hash_value"])
            committed = daemon.data_dir / image["id"]
            wait_until(committed.exists, "commit")
        full = wait_metric(daemon.url, "edgecache_cache_images", 3)
        assert full.get("edgecache_cache_max_size_bytes") == 8 * MiB
        assert " DEBUG " not in daemon.log_text()

        daemon.reconfigure({"cache": {"max_size": "5M"}, "DEFAULT": {"debug": "true"}})
        daemon.signal(signal.SIGHUP)

        after = wait_metric(daemon.url, "edgecache_cache_max_size_bytes", 5 * MiB)
        after = wait_metric(daemon.url, "edgecache_cache_evictions_total", 1)
        assert after.get("edgecache_cache_images") == 2
        assert after.get("edgecache_cache_size_bytes") == 2 * size
        wait_until(lambda: not (daemon.data_dir / images[1]["id"]).exists(), "LRU file removed")
        assert sorted(p.name for p in daemon.data_dir.iterdir()) == sorted(
            [images[0]["id"], images[2]["id"]]
        )
        assert "SIGHUP: [cache] max_size 8388608 -> 5242880 bytes" in daemon.log_text()

        # debug = true took effect too: the next request logs at DEBUG.
        got = Download(f"{daemon.url}/v2/images/{images[0]['id']}/file").start().wait()
        assert got.status == 200
        wait_until(lambda: f"image {images[0]['id']}: hit" in daemon.log_text(), "a DEBUG line")
        assert daemon.running
        assert scrape(daemon.url).get("edgecache_cache_images") == 2


def test_sighup_with_a_bad_value_keeps_the_running_configuration(
    glance: FaultyGlance, tmp_path: Path
) -> None:
    with EdgecacheProcess(
        tmp_path / "edgecache", glance_endpoints=[glance.url], max_size="8M"
    ) as daemon:
        daemon.reconfigure({"cache": {"max_size": "lots"}})
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP: option max_size: 'lots' is not a size" in daemon.log_text(),
                 "the refusal to be logged")
        assert daemon.running
        assert scrape(daemon.url).get("edgecache_cache_max_size_bytes") == 8 * MiB
