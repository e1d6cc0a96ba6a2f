"""The prefetch queue in front of a real Glance: durability, the rate cap, live joins.

See docs/behaviour.md#prefetch.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from lab.edgecache import metric_value
from lab.glance import LocalGlance
from lab.polling import wait_until
from lab.units import MiB
from tests.operator.support import (
    ImageFactory,
    cache_state,
    cached_ids,
    download,
    edgecache_cli,
    file_gets,
    operator_daemon,
    queued_ids,
)


def _progress(url: str, image_id: str) -> int:
    rows = [r for r in cache_state(url)["prefetch"] if r["image_id"] == image_id]
    return int(rows[0]["bytes_done"]) if rows else 0


def test_queue_survives_kill9_mid_prefetch(
    tmp_path: Path, real_glance: LocalGlance, make_image: ImageFactory
) -> None:
    first, second = make_image(12 * MiB), make_image(2 * MiB)
    daemon = operator_daemon(
        tmp_path, [real_glance.url], prefetch={"workers": 1, "max_rate": "4M"}
    )
    with daemon:
        result = edgecache_cli(daemon.url, "queue", first.id, second.id)
        assert result.returncode == 0, result.stderr
        wait_until(lambda: _progress(daemon.url, first.id) > 0, "the prefetch to start")
        daemon.kill9()
        assert list((daemon.cache_dir / "incomplete").iterdir()), "a partial was left behind"

        daemon.start()
        # Same order, nothing lost; the partial is not trusted, the fetch starts over.
        assert queued_ids(daemon.url)[:2] == [first.id, second.id] or (
            queued_ids(daemon.url) == [second.id] and first.id in cached_ids(daemon.url)
        )
        wait_until(lambda: {first.id, second.id} <= cached_ids(daemon.url),
                   "the queue to complete after the restart", timeout=60)
        # a worker takes its entry off the queue once it sees the commit, a moment after
        wait_until(lambda: queued_ids(daemon.url) == [], "the queue to empty")
        assert list((daemon.cache_dir / "incomplete").iterdir()) == []
        for image in (first, second):
            digest, size, _ = download(daemon.url, image.id)
            assert (digest, size) == (image.sha512, image.size)
        assert metric_value(daemon.url, "edgecache_prefetch_total", result="cached") == 2
        assert metric_value(daemon.url, "edgecache_prefetch_queue_length") == 0


def test_max_rate_caps_prefetch_but_not_live_downloads(
    tmp_path: Path, real_glance: LocalGlance, make_image: ImageFactory
) -> None:
    rate = 4 * MiB
    prefetched, live = make_image(16 * MiB), make_image(96 * MiB)
    daemon = operator_daemon(tmp_path, [real_glance.url], prefetch={"max_rate": "4M"})
    with daemon:
        started = time.monotonic()
        assert edgecache_cli(daemon.url, "queue", prefetched.id).returncode == 0
        wait_until(lambda: _progress(daemon.url, prefetched.id) > 0, "the prefetch to start")
        # A live download of another image meanwhile: not capped.
        digest, size, elapsed = download(daemon.url, live.id)
        assert digest == live.sha512
        assert size / elapsed > 4 * rate, f"live download at {size / elapsed / MiB:.1f} MiB/s"
        assert prefetched.id not in cached_ids(daemon.url), "the prefetch ran past its cap"

        wait_until(lambda: prefetched.id in cached_ids(daemon.url), "the prefetch", timeout=60)
        took = time.monotonic() - started
        # The bucket starts empty and holds a quarter second: 16 MiB take >= 4 s less that.
        assert took >= prefetched.size / rate - 0.5, f"prefetch took only {took:.1f} s"
        digest, _, _ = download(daemon.url, prefetched.id)
        assert digest == prefetched.sha512
        assert file_gets(real_glance, prefetched.id) == 1


def test_live_request_joins_a_capped_prefetch_at_full_speed(
    tmp_path: Path, real_glance: LocalGlance, make_image: ImageFactory
) -> None:
    image = make_image(64 * MiB)  # 64 s at the cap
    daemon = operator_daemon(tmp_path, [real_glance.url], prefetch={"max_rate": "1M"})
    with daemon:
        assert edgecache_cli(daemon.url, "queue", image.id).returncode == 0
        wait_until(lambda: _progress(daemon.url, image.id) > 0, "the prefetch to start")
        results: list[tuple[str, int, float]] = []
        reader = threading.Thread(target=lambda: results.append(download(daemon.url, image.id)))
        reader.start()
        reader.join(60)
        assert results, "the live download did not finish"
        digest, size, elapsed = results[0]
        assert (digest, size) == (image.sha512, image.size)
        assert elapsed < 10, f"the live caller took {elapsed:.1f} s: it was capped"
        wait_until(lambda: image.id in cached_ids(daemon.url), "the commit")
        # One fill served both: Glance sent the image once.
        assert file_gets(real_glance, image.id) == 1
        assert metric_value(daemon.url, "edgecache_image_requests_total", result="coalesced") == 1
