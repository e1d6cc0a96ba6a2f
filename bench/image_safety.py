"""What the format inspector costs a cold miss: ``[image_safety] mode = enforce`` vs ``off``.

A real Glance (noauth, its file store) holds a raw image of random bytes and the
same disk as qcow2 (``qemu-img convert``). Two edgecache daemons stand in front
of it, one inspecting every fill and one not; each round fetches each image cold
from each daemon once (the copy is removed through the cache API before every
GET), with curl writing to /dev/null, in an order that alternates from round to
round. It prints the median GB/s of each and the ratio ``enforce / off``
(the target: within 5 %).

Run it alone on an idle machine (docs/behaviour.md#measuring)::

    .venv/bin/python -m bench.image_safety [--image-mib 2048] [--rounds 3] [--json FILE]

It provisions Glance's virtualenv under ``.state`` the first time, needs
``qemu-img`` (Debian's qemu-utils), and stops every process it started by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lab.edgecache import EdgecacheProcess
from lab.glance import LocalGlance, ensure_glance_venv
from lab.httpclient import request
from lab.units import MiB
from lab.venvs import default_state_root

MODES = ("enforce", "off")


def _random_file(path: Path, size: int) -> None:
    with path.open("wb") as out:
        left = size
        while left:
            block = os.urandom(min(left, 4 * MiB))
            out.write(block)
            left -= len(block)


def _cold_get(daemon: EdgecacheProcess, image_id: str, size: int) -> float:
    """GB/s of one cold GET (the cached copy removed first), as curl saw it."""
    removed = request(daemon.port, "DELETE", f"/v2/cache/{image_id}")
    if removed.status not in (204, 404):
        raise RuntimeError(f"DELETE /v2/cache/{image_id} -> {removed.status}")
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}",
         f"{daemon.url}/v2/images/{image_id}/file"],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    status, got, seconds = int(out[0]), int(out[1]), float(out[2])
    if status != 200 or got != size:
        raise RuntimeError(f"GET {image_id} through {daemon.url}: {status}, {got} bytes")
    return size / seconds / 1e9


def _settle(daemon: EdgecacheProcess) -> None:
    """Wait until the fill committed (the next DELETE must find it, not race it)."""
    for _ in range(600):
        state = request(daemon.port, "GET", "/v2/cache?detail=1").json()
        if not state.get("fills"):
            return
        time.sleep(0.05)
    raise RuntimeError("a fill did not end")


def run(image_mib: int, rounds: int) -> dict[str, Any]:
    if shutil.which("qemu-img") is None:
        raise SystemExit("bench.image_safety needs qemu-img (Debian's qemu-utils)")
    root = default_state_root()
    venv = ensure_glance_venv(root)
    scratch = Path(tempfile.mkdtemp(prefix="image-safety-", dir=root))
    glance = LocalGlance(scratch / "glance", venv, flavor="")
    daemons: dict[str, EdgecacheProcess] = {}
    try:
        glance.start()
        raw = scratch / "disk.raw"
        _random_file(raw, image_mib * MiB)
        qcow2 = scratch / "disk.qcow2"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2],
                       check=True)
        images: dict[str, tuple[str, int]] = {}
        for name, path, disk_format in (("raw", raw, "raw"), ("qcow2", qcow2, "qcow2")):
            meta = glance.create_image(path, name=name, disk_format=disk_format)
            images[name] = (str(meta["id"]), path.stat().st_size)
            path.unlink()  # Glance holds it now; keep the disk for the caches
        for mode in MODES:
            daemons[mode] = EdgecacheProcess(
                scratch / mode, glance_endpoints=[glance.url], max_size=f"{image_mib * 3}M",
                stall_time=None, start_timeout=60, options={"image_safety": {"mode": mode}},
            )
            daemons[mode].start()
        samples: dict[str, dict[str, list[float]]] = {
            name: {mode: [] for mode in MODES} for name in images
        }
        for round_no in range(rounds):
            order = MODES if round_no % 2 == 0 else tuple(reversed(MODES))
            for name, (image_id, size) in images.items():
                for mode in order:
                    samples[name][mode].append(_cold_get(daemons[mode], image_id, size))
                    _settle(daemons[mode])
        report: dict[str, Any] = {"image_mib": image_mib, "rounds": rounds, "images": {}}
        for name, by_mode in samples.items():
            medians = {mode: statistics.median(values) for mode, values in by_mode.items()}
            report["images"][name] = {
                "gbps": medians, "samples": by_mode,
                "enforce_over_off": medians["enforce"] / medians["off"],
            }
        return report
    finally:
        for daemon in daemons.values():
            daemon.stop()
        glance.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-mib", type=int, default=2048, help="raw image size (MiB)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    report = run(args.image_mib, args.rounds)
    print(f"{'image':<7} {'enforce GB/s':>13} {'off GB/s':>9} {'enforce / off':>14}")
    for name, numbers in report["images"].items():
        gbps = numbers["gbps"]
        print(f"{name:<7} {gbps['enforce']:>13.3f} {gbps['off']:>9.3f} "
              f"{numbers['enforce_over_off']:>14.3f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
