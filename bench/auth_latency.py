"""Added latency of the authorization checks on a cache hit, median and p99.

Every image request, hits included, is authorized by Glance as the caller: its
record (``GET /v2/images/{id}``, Glance's ``get_image``) and its ``download_image``
verdict (a one-byte ``GET /v2/images/{id}/file``), both reused for
``auth_cache_ttl`` (docs/behaviour.md#authorization); in keystone mode the token is
also validated by keystonemiddleware first. This bench starts a real Keystone, a
real Glance that trusts it, four edgecache daemons and an nginx ``proxy_cache`` in
front of it, and times sequential hits of one small image (so transfer time is
negligible) on a kept-alive connection:

==================  =============  ==============  ======================================
daemon              auth_strategy  auth_cache_ttl  what a hit pays for authorization
==================  =============  ==============  ======================================
noauth-warm         noauth         3600            two in-memory lookups (the baseline)
noauth-cold         noauth         0               + Glance's record and download verdict
keystone-warm       keystone       3600            + token validation (auth_token, thread)
keystone-cold       keystone       0               + all of it
nginx               (none)         (none)          nothing: nginx serves its cached file
==================  =============  ==============  ======================================

"Added" is each daemon's median/p99 minus the baseline's; "x nginx" its median over
nginx's, the same hit with no check at all (nginx is a peer of bench/run.py,
``bench/peers.py``). The warm rows are what a hit costs with the download check in
place; the cold rows what the checks cost when nothing is reused.

Run it alone on an idle machine (figures drift, docs/behaviour.md#measuring)::

    .venv/bin/python -m bench.auth_latency [--requests N] [--size BYTES] [--json FILE]
    .venv/bin/python -m bench.auth_latency --quick      # 50 hits each: a smoke test

It provisions Keystone and Glance in their own virtualenvs under ``.state`` the
first time (nginx from Debian's packages if missing), and stops every process it
started by pid before it exits.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.peers import NginxPeer, ensure_debian_packages
from bench.procs import Trash
from lab.edgecache import EdgecacheProcess
from lab.glance import ensure_glance_venv
from lab.keystone import KeystoneGlance, LocalKeystone, ensure_keystone_venv
from lab.ports import free_port
from lab.units import GiB
from lab.venvs import default_state_root

PASSWORD = "bench-pw"
VARIANTS = (
    ("noauth-warm", "noauth", 3600),
    ("noauth-cold", "noauth", 0),
    ("keystone-warm", "keystone", 3600),
    ("keystone-cold", "keystone", 0),
)


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _time_hits(port: int, path: str, token: str, count: int, size: int) -> list[float]:
    """Seconds per hit, sequential, one kept-alive connection (after warm-up requests)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"X-Auth-Token": token}
    samples = []
    try:
        for i in range(count + 20):
            started = time.perf_counter()
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            elapsed = time.perf_counter() - started
            if response.status != 200 or len(body) != size:
                raise RuntimeError(f"GET {path} -> {response.status}, {len(body)} bytes")
            if i >= 20:  # the first ones fill the cache and warm every cache on the way
                samples.append(elapsed)
    finally:
        conn.close()
    return samples


def _numbers(samples: list[float]) -> dict[str, Any]:
    return {
        "median_ms": statistics.median(samples) * 1000,
        "p99_ms": _percentile(samples, 0.99) * 1000,
        "requests": len(samples),
    }


def run(requests: int, size: int, *, nginx: bool = True) -> dict[str, Any]:
    root = default_state_root()
    ks_venv, glance_venv = ensure_keystone_venv(root), ensure_glance_venv(root)
    scratch = Path(tempfile.mkdtemp(prefix="auth-latency-", dir=root))
    keystone = LocalKeystone(scratch / "keystone", ks_venv)
    glance = KeystoneGlance(scratch / "glance", glance_venv, flavor="keystone", keystone=keystone)
    daemons: list[EdgecacheProcess] = []
    peers: list[NginxPeer] = []
    try:
        keystone.start()
        project = keystone.create_project("bench")
        keystone.create_user("bencher", PASSWORD, project, "member")
        glance.start()
        token = keystone.issue_token("bencher", PASSWORD, "bench")
        image = glance.create_image_as(token, os.urandom(size), visibility="private")
        path = f"/v2/images/{image['id']}/file"
        results: dict[str, Any] = {}
        for name, strategy, ttl in VARIANTS:
            daemon = EdgecacheProcess(
                scratch / name, glance_endpoints=[glance.url], auth_cache_ttl=ttl,
                stall_time=None, start_timeout=60,
                options={"DEFAULT": {"auth_strategy": strategy},
                         "keystone_authtoken": keystone.authtoken_options()},
            )
            daemons.append(daemon)
            daemon.start()
            samples = _time_hits(daemon.port, path, token, requests, size)
            daemon.stop()
            results[name] = _numbers(samples)
        if nginx:
            ensure_debian_packages({"nginx": "nginx"})
            peer = NginxPeer(scratch / "nginx", glance, str(image["id"]), free_port(),
                             Trash(scratch / "trash", GiB))
            peers.append(peer)
            peer.start()
            results["nginx"] = _numbers(_time_hits(peer.port, path, token, requests, size))
            peer.stop()
        base = results["noauth-warm"]
        reference = results.get("nginx")
        for numbers in results.values():
            numbers["added_median_ms"] = numbers["median_ms"] - base["median_ms"]
            numbers["added_p99_ms"] = numbers["p99_ms"] - base["p99_ms"]
            if reference is not None:
                numbers["x_nginx"] = numbers["median_ms"] / reference["median_ms"]
        return {"image_bytes": size, "variants": results}
    finally:
        for peer in peers:
            peer.stop()
        for daemon in daemons:
            daemon.stop()
        glance.stop()
        keystone.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="timed hits per daemon")
    parser.add_argument("--size", type=int, default=4096, help="image size in bytes")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--quick", action="store_true", help="50 timed hits each: a smoke test")
    parser.add_argument("--no-nginx", action="store_true", help="skip the nginx reference")
    args = parser.parse_args(argv)
    report = run(50 if args.quick else args.requests, args.size, nginx=not args.no_nginx)
    print(f"{'daemon':<15} {'median ms':>10} {'p99 ms':>8} {'added median':>13} "
          f"{'added p99':>10} {'x nginx':>8}")
    for name, n in report["variants"].items():
        ratio = f"{n['x_nginx']:>8.2f}" if "x_nginx" in n else f"{'-':>8}"
        print(
            f"{name:<15} {n['median_ms']:>10.2f} {n['p99_ms']:>8.2f} "
            f"{n['added_median_ms']:>13.2f} {n['added_p99_ms']:>10.2f} {ratio}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
