"""``./scripts/demo`` (``python -m lab.demo``): the main job on an embedded default.

Starts a real Glance (its published package, sqlite, file store, noauth) on
loopback, uploads a sample image, runs edgecache in front of it, and shows a
miss, a hit and the metrics. Everything it starts, it stops.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import time
import urllib.request
from pathlib import Path

from lab.edgecache import EdgecacheProcess
from lab.glance import LocalGlance, ensure_glance_venv
from lab.units import MiB
from lab.venvs import default_state_root

_SAMPLE_SIZE = 256 * MiB


def _sample_image(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size == size:
        return
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            chunk = os.urandom(min(remaining, 4 * MiB))
            out.write(chunk)
            remaining -= len(chunk)


def _download(url: str, expected_sha512: str) -> tuple[float, int, float]:
    """(seconds, bytes, seconds to first byte); raises if the body does not verify."""
    digest = hashlib.sha512()
    started = time.monotonic()
    first_byte = 0.0
    total = 0
    with urllib.request.urlopen(url, timeout=120) as response:
        while chunk := response.read(MiB):
            if not total:
                first_byte = time.monotonic() - started
            digest.update(chunk)
            total += len(chunk)
    elapsed = time.monotonic() - started
    if digest.hexdigest() != expected_sha512:
        raise RuntimeError("downloaded bytes do not match the image's sha512")
    return elapsed, total, first_byte


def run(*, size: int = _SAMPLE_SIZE, keep_running: bool = False) -> None:
    root = default_state_root()
    demo_dir = root / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    print(f"state directory: {demo_dir}")
    venv = ensure_glance_venv(root)
    glance = LocalGlance(state_dir=demo_dir / "glance", venv=venv)
    print("starting Glance (noauth, sqlite, file store) ...")
    glance.start()
    edgecache: EdgecacheProcess | None = None
    try:
        sample = demo_dir / "sample.img"
        _sample_image(sample, size)
        image = glance.create_image(sample, name="edgecache-demo")
        image_id = str(image["id"])
        expected = str(image["os_hash_value"])
        print(f"Glance at {glance.url}; uploaded image {image_id} ({size // MiB} MiB)")

        shutil.rmtree(demo_dir / "edgecache" / "cache", ignore_errors=True)  # start cold
        edgecache = EdgecacheProcess(
            demo_dir / "edgecache", glance_endpoints=[glance.url], max_size="4G",
            stall_time=None, auth_cache_ttl=None, start_timeout=30,
        ).start()
        url = edgecache.url
        print(f"edgecache at {url} (config {edgecache.config_file}, log {edgecache.log})")
        file_url = f"{url}/v2/images/{image_id}/file"
        for label in ("miss", "hit"):
            seconds, total, first = _download(file_url, expected)
            print(
                f"{label:>4}: {total / 1e6:.0f} MB in {seconds:.2f} s "
                f"({total / seconds / 1e9:.2f} GB/s), first byte after {first * 1000:.1f} ms, "
                "sha512 verified"
            )
        with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
            metrics = response.read().decode()
        print("metrics:")
        for line in metrics.splitlines():
            if line.startswith(("edgecache_image_requests_total", "edgecache_served_bytes_total",
                                "edgecache_upstream_fetched_bytes_total",
                                "edgecache_cache_size_bytes", "edgecache_cache_images")):
                print(f"  {line}")
        if keep_running:
            print(f"serving; try: curl -o /dev/null {file_url}   (Ctrl-C stops everything)")
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        if edgecache is not None:
            edgecache.stop(timeout=20)
        glance.stop()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lab.demo", description=__doc__)
    parser.add_argument("--size-mib", type=int, default=_SAMPLE_SIZE // MiB,
                        help="size of the sample image (default %(default)s)")
    parser.add_argument("--keep-running", action="store_true",
                        help="keep Glance and edgecache up until Ctrl-C")
    args = parser.parse_args(argv)
    run(size=args.size_mib * MiB, keep_running=args.keep_running)


if __name__ == "__main__":
    main()
