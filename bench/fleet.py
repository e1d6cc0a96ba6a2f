"""Origin traffic of a simulated site, and what a cut-and-resume costs.

``python -m bench.fleet`` (from the checkout): a real Glance, N edge edgecaches with
and without a regional edgecache in front of it, M concurrent cold "boots" per
edge, counted in Glance's own request log; then one edge behind a relay that cuts
image bodies, timed against an uncut run. Everything on 127.0.0.1, stopped by pid.

See docs/behaviour.md#tiers-and-stores.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import http.client
import os
import shutil
import statistics
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from lab.edgecache import EdgecacheProcess
from lab.glance import LocalGlance, ensure_glance_venv
from lab.units import MiB
from lab.venvs import default_state_root
from tests.support.relay import Relay


def _download(url: str, path: str) -> tuple[int, str]:
    """(status, sha512 of the body) of one GET."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        digest = hashlib.sha512()
        while chunk := response.read(MiB):
            digest.update(chunk)
        return response.status, digest.hexdigest()
    finally:
        conn.close()


def _origin_traffic(glance: LocalGlance, path: str) -> tuple[int, int]:
    """(GETs, bytes) Glance logged for ``path``."""
    records = [r for r in glance.request_log() if r.method == "GET" and r.path == path]
    return len(records), sum(r.size for r in records)


class _Images:
    def __init__(self, glance: LocalGlance, work: Path) -> None:
        self.glance = glance
        self.work = work

    def new(self, size: int) -> tuple[str, str]:
        data = os.urandom(size)
        blob = self.work / f"{uuid.uuid4().hex}.bin"
        blob.write_bytes(data)
        meta = self.glance.create_image(blob)
        blob.unlink()
        return f"/v2/images/{meta['id']}/file", hashlib.sha512(data).hexdigest()


def site_traffic(glance: LocalGlance, images: _Images, work: Path, edges: int, boots: int,
                 regional: bool, size: int) -> None:
    path, digest = images.new(size)
    with ExitStack() as stack:
        upstream = [glance.url]
        if regional:
            tier = stack.enter_context(EdgecacheProcess(
                work / uuid.uuid4().hex, glance_endpoints=[glance.url], max_size="4G"))
            upstream = [tier.url]
        nodes = [
            stack.enter_context(
                EdgecacheProcess(work / uuid.uuid4().hex, glance_endpoints=upstream, max_size="4G"))
            for _ in range(edges)
        ]
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(edges * boots) as pool:
            results = list(pool.map(lambda node: _download(node.url, path), nodes * boots))
        took = time.monotonic() - started
        if any(result != (200, digest) for result in results):
            raise RuntimeError("a download did not verify")
        time.sleep(1.0)  # uWSGI logs a request once it has been sent
        gets, sent = _origin_traffic(glance, path)
        print(f"{edges} edges x {boots} boots, regional tier {'yes' if regional else 'no '}: "
              f"{gets} image-data GETs at Glance, {sent / MiB:.1f} MiB sent, wall {took:.2f} s",
              flush=True)


def resume_cost(glance: LocalGlance, images: _Images, work: Path, size: int, rounds: int) -> None:
    cases = (("no cut", ()), ("one cut", (size * 2 // 5,)), ("three cuts", (size // 4,) * 3))
    times: dict[str, list[float]] = {label: [] for label, _ in cases}
    for _ in range(rounds):
        for label, cuts in cases:
            path, digest = images.new(size)
            with Relay(glance.url) as relay, EdgecacheProcess(
                work / uuid.uuid4().hex, glance_endpoints=[relay.url], max_size="4G"
            ) as edge:
                relay.cut_next(*cuts)
                started = time.monotonic()
                if _download(edge.url, path) != (200, digest):
                    raise RuntimeError("a resumed download did not verify")
                times[label].append(time.monotonic() - started)
                gets, sent = _origin_traffic(glance, path)
            print(f"  {label}: {gets} GETs at Glance, {sent / MiB:.1f} MiB sent "
                  f"for a {size / MiB:.0f} MiB image", flush=True)
    for label, runs in times.items():
        print(f"{size / MiB:.0f} MiB cold GET, {label}: median {statistics.median(runs):.2f} s "
              f"(runs {', '.join(f'{t:.2f}' for t in runs)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image-mib", type=int, default=64, help="image size for the site runs")
    parser.add_argument("--resume-mib", type=int, default=256, help="image size for resume runs")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = default_state_root()
    state = root / "bench" / f"fleet-{uuid.uuid4().hex[:6]}"
    work = Path(tempfile.mkdtemp(prefix="edgecache-fleet-"))
    glance = LocalGlance(state, ensure_glance_venv(root), flavor="")
    try:
        glance.start()
        images = _Images(glance, work)
        for edges, boots in ((2, 10), (4, 10)):
            for regional in (False, True):
                site_traffic(glance, images, work, edges, boots, regional, args.image_mib * MiB)
        resume_cost(glance, images, work, args.resume_mib * MiB, args.rounds)
    finally:
        glance.stop()
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
