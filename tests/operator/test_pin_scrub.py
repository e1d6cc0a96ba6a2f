"""Pinning under eviction pressure, and corrupt committed files found and refetched."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from lab.edgecache import EdgecacheProcess, metric_value
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
)


def _is_cached(daemon: EdgecacheProcess, image_id: str) -> bool:
    return image_id in cached_ids(daemon.url)


def _flip_byte(daemon: EdgecacheProcess, image_id: str, offset: int) -> None:
    """Bit rot in a committed file, behind edgecache's back."""
    with (daemon.data_dir / image_id).open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


def test_pinned_image_survives_pressure(
    tmp_path: Path, real_glance: LocalGlance, make_image: ImageFactory
) -> None:
    pinned, *others = [make_image(8 * MiB) for _ in range(7)]
    with operator_daemon(tmp_path, [real_glance.url], max_size="32M") as daemon:
        download(daemon.url, pinned.id)
        wait_until(lambda: pinned.id in cached_ids(daemon.url), "the first commit")
        result = edgecache_cli(daemon.url, "pin", pinned.id)
        assert result.returncode == 0, result.stderr
        assert f"Pinned {pinned.id}" in result.stdout

        for image in others[:6]:  # 48 MiB through a 32 MiB cache, the pinned one the oldest
            digest, _, _ = download(daemon.url, image.id)
            assert digest == image.sha512
            wait_until(partial(_is_cached, daemon, image.id), "a commit")
        cached = cached_ids(daemon.url)
        assert pinned.id in cached
        assert cached == {pinned.id, *(image.id for image in others[3:6])}
        assert metric_value(daemon.url, "edgecache_cache_evictions_total") == 3
        # Still served from the cache: Glance sent it once.
        assert download(daemon.url, pinned.id)[0] == pinned.sha512
        assert file_gets(real_glance, pinned.id) == 1

        # 8 + 3 x 8 MiB pinned fill the 32 MiB: a fifth pin is refused, clearly.
        for image in others[3:6]:
            assert edgecache_cli(daemon.url, "pin", image.id).returncode == 0
        result = edgecache_cli(daemon.url, "pin", others[0].id)
        assert result.returncode == 1
        assert "max_size" in result.stderr
        # Unpinned, the oldest pin is the first to go again.
        assert edgecache_cli(daemon.url, "unpin", pinned.id).returncode == 0
        entry = next(e for e in cache_state(daemon.url)["cached_images"]
                     if e["image_id"] == pinned.id)
        assert entry["pinned"] is False


def test_pin_of_an_uncached_image_queues_it(
    tmp_path: Path, real_glance: LocalGlance, make_image: ImageFactory
) -> None:
    image = make_image(2 * MiB)
    with operator_daemon(tmp_path, [real_glance.url]) as daemon:
        result = edgecache_cli(daemon.url, "--format", "json", "pin", image.id)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"image_id": image.id, "pinned": False, "queued": True}
        wait_until(lambda: image.id in cached_ids(daemon.url), "the prefetch")
        wait_until(lambda: all(e["pinned"] for e in cache_state(daemon.url)["cached_images"]),
                   "the pin after the prefetch")


def test_scrubber_finds_a_flipped_byte(
    tmp_path: Path, real_glance: LocalGlance, make_image: ImageFactory
) -> None:
    image = make_image(8 * MiB)
    daemon = operator_daemon(
        tmp_path, [real_glance.url], cache={"scrub_rate": "50M", "scrub_interval": 1}
    )
    with daemon:
        download(daemon.url, image.id)
        wait_until(lambda: image.id in cached_ids(daemon.url), "the commit")
        # A clean pass first: a correct image is left alone.
        first = cache_state(daemon.url)["cached_images"][0]["last_verified"]
        wait_until(
            lambda: cache_state(daemon.url)["cached_images"][0]["last_verified"] > first,
            "a scrub of the intact image",
        )
        assert metric_value(daemon.url, "edgecache_integrity_failures_total") == 0

        _flip_byte(daemon, image.id, 5 * MiB + 17)
        wait_until(lambda: image.id not in cached_ids(daemon.url), "the scrubber to evict it")
        assert metric_value(daemon.url, "edgecache_integrity_failures_total") == 1
        assert "is corrupt" in daemon.log_text()

        digest, size, _ = download(daemon.url, image.id)
        assert (digest, size) == (image.sha512, image.size)
        assert file_gets(real_glance, image.id, at_least=2) == 2
        wait_until(lambda: image.id in cached_ids(daemon.url), "the refetched commit")


def test_verify_finds_a_flipped_byte(
    tmp_path: Path, real_glance: LocalGlance, make_image: ImageFactory
) -> None:
    good, bad = make_image(4 * MiB), make_image(4 * MiB)
    with operator_daemon(tmp_path, [real_glance.url], cache={"scrub_rate": 0}) as daemon:
        for image in (good, bad):
            download(daemon.url, image.id)
        wait_until(lambda: {good.id, bad.id} <= cached_ids(daemon.url), "the commits")

        result = edgecache_cli(daemon.url, "verify")
        assert result.returncode == 0, result.stderr
        assert f"{good.id}  ok" in result.stdout and f"{bad.id}  ok" in result.stdout

        _flip_byte(daemon, bad.id, 0)
        result = edgecache_cli(daemon.url, "verify", good.id)
        assert (result.returncode, result.stdout.strip()) == (0, f"{good.id}  ok")
        result = edgecache_cli(daemon.url, "verify", bad.id)
        assert result.returncode == 1
        assert f"{bad.id}  corrupt" in result.stdout
        assert "1 corrupt image(s) evicted" in result.stderr
        assert cached_ids(daemon.url) == {good.id}
        assert metric_value(daemon.url, "edgecache_integrity_failures_total") == 1

        digest, _, _ = download(daemon.url, bad.id)
        assert digest == bad.sha512
        assert file_gets(real_glance, bad.id, at_least=2) == 2
        assert file_gets(real_glance, good.id) == 1
