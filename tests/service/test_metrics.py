"""Every counter of docs/behaviour.md#metrics moves as it must, seen through real scrapes.

One daemon goes through a miss, a hit, a coalesced request, an integrity failure,
an upstream error and a resumed body; after each step the scrape is compared
with the one before, so a counter that moves when it must not fails as well.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from lab.edgecache import EdgecacheProcess
from lab.polling import wait_until
from lab.units import MiB
from tests.service import Download, Scrape, scrape, wait_metric
from tests.support.faultyglance import Fault, FaultyGlance

SIZE = 2 * MiB
TOKEN = "tok-4f1d9a0c-secret"  # must never show up in a scrape

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

COUNTERS = (
    "edgecache_image_requests_total",
    "edgecache_served_bytes_total",
    "edgecache_upstream_fetched_bytes_total",
    "edgecache_cache_evictions_total",
    "edgecache_upstream_errors_total",
    "edgecache_integrity_failures_total",
    "edgecache_time_to_first_byte_seconds_count",
    "edgecache_request_duration_seconds_count",
)


@pytest.fixture
def glance() -> Iterator[FaultyGlance]:
    with FaultyGlance() as server:
        yield server


@pytest.fixture
def daemon(glance: FaultyGlance, tmp_path: Path) -> Iterator[EdgecacheProcess]:
    with EdgecacheProcess(
        tmp_path / "edgecache", glance_endpoints=[glance.url], max_size="64M"
    ) as running:
        yield running


def moved(before: Scrape, after: Scrape) -> dict[str, float]:
    """The counters that changed, as ``name{label=value}`` -> delta.

    The scrapes themselves (``route="metrics"``) are left out: polling moves them.
    """
    changes = {}
    for key in before.samples.keys() | after.samples.keys():
        name, labels = key
        if name not in COUNTERS or ("route", "metrics") in labels:
            continue
        delta = after.samples.get(key, 0.0) - before.samples.get(key, 0.0)
        if delta:
            rendered = ",".join(f"{k}={v}" for k, v in sorted(labels))
            changes[f"{name}{{{rendered}}}" if rendered else name] = delta
    return changes


def get(daemon: EdgecacheProcess, image_id: str) -> Download:
    return Download(f"{daemon.url}/v2/images/{image_id}/file",
                    headers={"X-Auth-Token": TOKEN}).start()


def settle(daemon: EdgecacheProcess) -> None:
    """No fill running (the gauge is back to 0)."""
    wait_metric(daemon.url, "edgecache_fills_in_progress", 0.0)


def test_counters_across_miss_hit_coalesced_integrity_and_upstream_errors(
    daemon: EdgecacheProcess, glance: FaultyGlance
) -> None:
    url = daemon.url
    image = glance.add_image(os.urandom(SIZE))
    first = scrape(url)
    assert first.get("edgecache_cache_max_size_bytes") == 64 * MiB
    assert first.get("edgecache_cache_images") == 0
    assert first.get("edgecache_fills_in_progress") == 0

    # -- a miss: one fill, bytes from upstream
    got = get(daemon, image["id"]).wait()
    assert (got.status, got.error, got.sha512) == (200, None, image["os_hash_value"])
    settle(daemon)
    after_miss = wait_metric(url, "edgecache_served_bytes_total", SIZE, source="upstream")
    assert moved(first, after_miss) == {
        "edgecache_image_requests_total{result=miss}": 1,
        "edgecache_served_bytes_total{source=upstream}": SIZE,
        "edgecache_upstream_fetched_bytes_total": SIZE,
        "edgecache_time_to_first_byte_seconds_count{result=miss}": 1,
        "edgecache_request_duration_seconds_count{route=image_data}": 1,
    }
    assert after_miss.get("edgecache_cache_size_bytes") == SIZE
    assert after_miss.get("edgecache_cache_images") == 1

    # -- a hit: bytes from the cache, nothing fetched
    got = get(daemon, image["id"]).wait()
    assert (got.status, got.error, got.sha512) == (200, None, image["os_hash_value"])
    after_hit = wait_metric(url, "edgecache_served_bytes_total", SIZE, source="cache")
    assert moved(after_miss, after_hit) == {
        "edgecache_image_requests_total{result=hit}": 1,
        "edgecache_served_bytes_total{source=cache}": SIZE,
        "edgecache_time_to_first_byte_seconds_count{result=hit}": 1,
        "edgecache_request_duration_seconds_count{route=image_data}": 1,
    }

    # -- coalesced: a second caller joins the fill while it trickles in
    slow = glance.add_image(
        os.urandom(SIZE), fault=Fault(trickle_chunk=128 * 1024, trickle_delay=0.05)
    )
    leader = get(daemon, slow["id"])
    assert leader.first_byte.wait(10)
    during = scrape(url)
    assert during.get("edgecache_fills_in_progress") == 1
    follower = get(daemon, slow["id"])
    for download in (leader.wait(), follower.wait()):
        assert (download.status, download.error) == (200, None)
        assert download.sha512 == slow["os_hash_value"]
    assert glance.count("GET", f"/v2/images/{slow['id']}/file") == 1
    settle(daemon)
    after_join = wait_metric(url, "edgecache_served_bytes_total", 3 * SIZE, source="upstream")
    assert moved(after_hit, after_join) == {
        "edgecache_image_requests_total{result=miss}": 1,
        "edgecache_image_requests_total{result=coalesced}": 1,
        "edgecache_served_bytes_total{source=upstream}": 2 * SIZE,
        "edgecache_upstream_fetched_bytes_total": SIZE,
        "edgecache_time_to_first_byte_seconds_count{result=miss}": 1,
        "edgecache_time_to_first_byte_seconds_count{result=coalesced}": 1,
        "edgecache_request_duration_seconds_count{route=image_data}": 2,
    }
    assert after_join.get("edgecache_cache_images") == 2

    # -- an integrity failure: the response is cut before its last byte, nothing kept
    corrupt = glance.add_image(os.urandom(SIZE), fault=Fault(wrong_hash=True))
    got = get(daemon, corrupt["id"]).wait()
    assert got.status == 200
    assert got.error is not None and got.size < SIZE
    settle(daemon)
    after_corrupt = wait_metric(url, "edgecache_integrity_failures_total", 1)
    changes = moved(after_join, after_corrupt)
    # What the kernel took before the cut (the client may lose the tail of it); none at
    # all when the whole body landed and failed its hash before the reader's first slice.
    cut_short = changes.pop("edgecache_served_bytes_total{source=upstream}", 0)
    assert got.size <= cut_short < SIZE
    first_bytes = changes.pop("edgecache_time_to_first_byte_seconds_count{result=miss}", 0)
    assert first_bytes == (1 if cut_short else 0)
    assert changes == {
        # each request counts once: a fill that fails makes its request an error
        "edgecache_image_requests_total{result=error}": 1,
        "edgecache_integrity_failures_total": 1,
        "edgecache_upstream_fetched_bytes_total": SIZE,
        "edgecache_request_duration_seconds_count{route=image_data}": 1,
    }
    assert after_corrupt.get("edgecache_cache_images") == 2

    # -- upstream errors: Glance cannot answer the metadata, then the data
    broken = glance.add_image(os.urandom(SIZE), fault=Fault(metadata_status=500, times=1))
    got = get(daemon, broken["id"]).wait()
    assert got.status == 503
    glance.set_fault(broken["id"], Fault(status=503, times=1))
    got = get(daemon, broken["id"]).wait()
    assert got.status == 503
    settle(daemon)
    after_errors = scrape(url)
    assert moved(after_corrupt, after_errors) == {
        "edgecache_image_requests_total{result=error}": 2,  # the second: its fill failed
        "edgecache_upstream_errors_total{reason=status}": 2,
        "edgecache_request_duration_seconds_count{route=image_data}": 2,
    }

    # -- a body cut once is resumed: one upstream error, the caller never notices
    cut = glance.add_image(os.urandom(SIZE), fault=Fault(cut_after=SIZE // 2, times=1))
    got = get(daemon, cut["id"]).wait()
    assert (got.status, got.error, got.sha512) == (200, None, cut["os_hash_value"])
    settle(daemon)
    after_resume = wait_metric(url, "edgecache_upstream_errors_total", 1, reason="body")
    assert after_resume.get("edgecache_image_requests_total", result="miss") == (
        after_errors.get("edgecache_image_requests_total", result="miss") + 1
    )
    assert after_resume.get("edgecache_integrity_failures_total") == 1
    assert after_resume.get("edgecache_cache_images") == 3

    # -- the scrape names no image and no token
    final = scrape(url)
    assert TOKEN not in final.text
    assert not [value for value in final.label_values() if _UUID.search(value)]
    assert final.get("edgecache_cache_evictions_total") == 0


def test_evictions_and_cache_gauges_follow_the_lru(glance: FaultyGlance, tmp_path: Path) -> None:
    with EdgecacheProcess(
        tmp_path / "edgecache", glance_endpoints=[glance.url], max_size="5M"
    ) as daemon:
        images = [glance.add_image(os.urandom(SIZE)) for _ in range(3)]
        for image in images[:2]:
            assert get(daemon, image["id"]).wait().status == 200
        settle(daemon)
        full = wait_metric(daemon.url, "edgecache_cache_images", 2)
        assert full.get("edgecache_cache_size_bytes") == 2 * SIZE
        assert full.get("edgecache_cache_evictions_total") == 0

        assert get(daemon, images[2]["id"]).wait().status == 200  # needs the LRU's space
        settle(daemon)
        after = wait_metric(daemon.url, "edgecache_cache_evictions_total", 1)
        assert after.get("edgecache_cache_images") == 2
        assert after.get("edgecache_cache_size_bytes") == 2 * SIZE
        wait_until(lambda: not (daemon.data_dir / images[0]["id"]).exists(), "LRU file removed")


def test_passthrough_and_own_routes_are_timed_by_route(daemon: EdgecacheProcess) -> None:
    before = scrape(daemon.url)
    assert requests.get(f"{daemon.url}/v2/images", timeout=10).status_code == 200
    assert requests.get(f"{daemon.url}/healthcheck", timeout=10).status_code == 200
    assert requests.get(f"{daemon.url}/versions", timeout=10).status_code == 200
    after = scrape(daemon.url)
    for route in ("passthrough", "healthcheck", "versions"):
        name = "edgecache_request_duration_seconds_count"
        assert after.get(name, route=route) == before.get(name, route=route) + 1, route
    assert after.get("edgecache_request_duration_seconds_count", route="metrics") >= 1


def test_image_bytes_glance_serves_itself_count_as_upstream_bytes(
    daemon: EdgecacheProcess, glance: FaultyGlance
) -> None:
    """A ranged miss is passed through (no fill from a partial read): still a miss, and
    its bytes are upstream bytes served, so the byte hit ratio stays honest."""
    image = glance.add_image(os.urandom(SIZE))
    before = scrape(daemon.url)
    response = requests.get(
        f"{daemon.url}/v2/images/{image['id']}/file", headers={"Range": "bytes=0-99999"},
        timeout=10,
    )
    assert response.status_code == 206
    assert len(response.content) == 100_000
    after = wait_metric(daemon.url, "edgecache_served_bytes_total", 100_000, source="upstream")
    assert moved(before, after) == {
        "edgecache_image_requests_total{result=miss}": 1,
        "edgecache_served_bytes_total{source=upstream}": 100_000,
        "edgecache_time_to_first_byte_seconds_count{result=miss}": 1,
        "edgecache_request_duration_seconds_count{route=image_data}": 1,
    }
    assert after.get("edgecache_cache_images") == 0
