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
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from lab.glance import LocalGlance, default_state_root, ensure_venv, free_port

_SAMPLE_SIZE = 256 << 20


def _sample_image(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size == size:
        return
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            chunk = os.urandom(min(remaining, 4 << 20))
            out.write(chunk)
            remaining -= len(chunk)


def _wait_until_up(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"edgecache exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/versions", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise RuntimeError("edgecache did not start in time")


def _download(url: str, expected_sha512: str) -> tuple[float, int, float]:
    """(seconds, bytes, seconds to first byte); raises if the body does not verify."""
    digest = hashlib.sha512()
    started = time.monotonic()
    first_byte = 0.0
    total = 0
    with urllib.request.urlopen(url, timeout=120) as response:
        while chunk := response.read(1 << 20):
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
    venv = ensure_venv(root)
    glance = LocalGlance(state_dir=demo_dir / "glance", venv=venv)
    print("starting Glance (noauth, sqlite, file store) ...")
    glance.start()
    edgecache: subprocess.Popen[bytes] | None = None
    try:
        sample = demo_dir / "sample.img"
        _sample_image(sample, size)
        image = glance.create_image(sample, name="edgecache-demo")
        image_id = str(image["id"])
        expected = str(image["os_hash_value"])
        print(f"Glance at {glance.url}; uploaded image {image_id} ({size >> 20} MiB)")

        port = free_port()
        cache_dir = demo_dir / "cache"
        shutil.rmtree(cache_dir, ignore_errors=True)  # every demo starts cold
        conf = demo_dir / "edgecache.conf"
        conf.write_text(
            "[DEFAULT]\n"
            f"bind_host = 127.0.0.1\nbind_port = {port}\nauth_strategy = noauth\n"
            f"[cache]\ndirectory = {cache_dir}\nmax_size = 4G\n"
            f"[upstream]\nglance_endpoints = {glance.url}\n"
        )
        url = f"http://127.0.0.1:{port}"
        log = open(demo_dir / "edgecache.log", "wb")  # noqa: SIM115 - lives as long as the child
        edgecache = subprocess.Popen(
            [sys.executable, "-m", "edgecache", "serve", "--config-file", str(conf)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        _wait_until_up(url, edgecache)
        print(f"edgecache at {url} (config {conf}, log {log.name})")
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
            edgecache.terminate()
            try:
                edgecache.wait(timeout=20)
            except subprocess.TimeoutExpired:
                edgecache.kill()
                edgecache.wait()
        glance.stop()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lab.demo", description=__doc__)
    parser.add_argument("--size-mib", type=int, default=_SAMPLE_SIZE >> 20,
                        help="size of the sample image (default %(default)s)")
    parser.add_argument("--keep-running", action="store_true",
                        help="keep Glance and edgecache up until Ctrl-C")
    args = parser.parse_args(argv)
    run(size=args.size_mib << 20, keep_running=args.keep_running)


if __name__ == "__main__":
    main()
