"""Run every quality-bar measurement against every peer, interleaved, and print figures and ratios.

    .venv/bin/python -m bench.run            # 2 GiB image, 3 rounds
    .venv/bin/python -m bench.run --quick    # 256 MiB image, 1 round: a smoke test

Each round measures every scenario on every peer back to back (peer A, peer B, ...), so ratios
compare figures taken minutes apart, not passes taken at different times.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import report
from bench.clients import curl_many
from bench.idle import raise_nofile
from bench.peers import (
    EdgecachePeer,
    GlancePeer,
    NginxPeer,
    Peer,
    VarnishPeer,
    ensure_debian_packages,
)
from bench.procs import Trash
from bench.profiling import Profiler, py_spy
from bench.scenarios import MACHINE, SCENARIOS, Scenario, Settings
from lab.glance import LocalGlance, ensure_glance_venv
from lab.ports import free_port
from lab.procs import StartError
from lab.units import GiB, MiB
from lab.venvs import default_state_root

ALL_PEERS = ("glance", "nginx", "varnish", "glance-cache", "edgecache", "edgecache-gc")
DEFAULT_PEERS = ("glance", "nginx", "varnish", "glance-cache", "edgecache")
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="256 MiB image, 1 round, short meta runs")
    p.add_argument("--rounds", type=int, help="rounds (default 3, --quick 1)")
    p.add_argument("--image-mib", type=int, help="image size in MiB (default 2048, --quick 256)")
    p.add_argument("--meta-seconds", type=float, help="paced metadata run per peer (default 10 s)")
    p.add_argument("--rate", type=float, default=200.0, help="metadata requests/s (default 200)")
    p.add_argument(
        "--low-rate", type=float, default=50.0, help="second, unsaturated rate (default 50)"
    )
    p.add_argument(
        "--peers",
        default=",".join(DEFAULT_PEERS),
        help=f"comma-separated, in run order, from {','.join(ALL_PEERS)} (default: %(default)s)",
    )
    usual = ",".join(s.key for s in SCENARIOS if s.default)
    heavy = ",".join(s.key for s in SCENARIOS if not s.default)
    p.add_argument(
        "--scenarios",
        default="default",
        help=f"comma-separated keys, 'default' ({usual}) or 'all' (adds {heavy})",
    )
    p.add_argument("--state-dir", type=Path, help="default: <repo>/.state/bench")
    p.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy edgecache during each batch into DIR/<scenario>-round<N>.txt (raw stacks)",
    )
    args = p.parse_args(argv)
    args.peers = [n for n in args.peers.split(",") if n]
    args.scenarios = expand_scenarios(args.scenarios)
    for name in args.peers:
        if name not in ALL_PEERS:
            p.error(f"unknown peer {name!r}")
    for key in args.scenarios:
        if key not in {s.key for s in SCENARIOS}:
            p.error(f"unknown scenario {key!r}")
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.image_size = (args.image_mib or (256 if args.quick else 2048)) * MiB
    args.meta_seconds = args.meta_seconds or (3.0 if args.quick else 10.0)
    args.py_spy = py_spy() if args.profile else None
    if args.profile and not args.py_spy:
        p.error("--profile needs py-spy: pip install py-spy (the bench extra)")
    return args


def expand_scenarios(spec: str) -> list[str]:
    """`default`, `all` or keys, comma-separated; run order is always SCENARIOS' order."""
    keys: set[str] = set()
    for name in filter(None, spec.split(",")):
        if name == "default":
            keys |= {s.key for s in SCENARIOS if s.default}
        elif name == "all":
            keys |= {s.key for s in SCENARIOS}
        else:
            keys.add(name)
    known = [s.key for s in SCENARIOS]
    return [k for k in known if k in keys] + sorted(keys - set(known))


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def ensure_image_file(state: Path, size: int) -> Path:
    """Random bytes, generated once per size and kept: regenerating 2 GiB costs ~10 s."""
    path = state / f"image-{size}.bin"
    if path.is_file() and path.stat().st_size == size:
        return path
    say(f"generating {size / MiB:.0f} MiB of random data in {path}")
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as out:
        for offset in range(0, size, 4 * MiB):
            out.write(os.urandom(min(4 * MiB, size - offset)))
    tmp.rename(path)
    return path


def ensure_glance_image(glance: LocalGlance, data: Path) -> str:
    """Upload the image once per Glance state dir; later runs find it again by id."""
    manifest = glance.state_dir / "bench-images.json"
    known: dict[str, str] = json.loads(manifest.read_text()) if manifest.exists() else {}
    size = data.stat().st_size
    image_id = known.get(str(size))
    if image_id:
        resp = glance.request("GET", f"/v2/images/{image_id}")
        if resp.status == 200 and resp.json().get("status") == "active":
            return image_id
    say(f"uploading {size / MiB:.0f} MiB to Glance at {glance.url}")
    image_id = str(glance.create_image(data, name=f"bench-{size}")["id"])
    known[str(size)] = image_id
    manifest.write_text(json.dumps(known) + "\n")
    return image_id


def tool_versions() -> dict[str, str]:
    out = {}
    for name, argv in {
        "nginx": ["nginx", "-v"],
        "varnish": ["varnishd", "-V"],
        "curl": ["curl", "--version"],
        "edgecache commit": ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
    }.items():
        with contextlib.suppress(OSError):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            lines = (done.stdout + done.stderr).splitlines()
            out[name] = lines[0] if done.returncode == 0 and lines else "unknown"
    return out


class Bench:
    """Owns every process of one run; `close` stops them all, in reverse order of start."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.state: Path = (args.state_dir or default_state_root() / "bench").resolve()
        self.state.mkdir(parents=True, exist_ok=True)
        self.stack = contextlib.ExitStack()
        self.trash = Trash(self.state / "trash", cap=max(8 * GiB, 3 * args.image_size))
        self.stack.callback(self.trash.empty)
        self.peers: dict[str, Peer] = {}
        self.origin: LocalGlance | None = None
        self.origin_id = ""
        self.gcache: GlancePeer | None = None
        self.skipped: dict[str, str] = {}
        self.profiler = Profiler(args.profile.resolve(), args.py_spy) if args.py_spy else None

    def close(self) -> None:
        self.stack.close()

    def _glance(self, name: str, flavor: str, close_connections: bool, threads: int) -> LocalGlance:
        venv = ensure_glance_venv(default_state_root())
        glance = LocalGlance(
            self.state / name,
            venv,
            flavor=flavor,
            threads=threads,
            close_connections=close_connections,
        )
        self.stack.callback(glance.stop)
        glance.start()
        say(f"{name}: Glance (flavor {flavor or 'none'!r}) at {glance.url}, pid {glance.pid}")
        return glance

    def setup(self) -> None:
        wanted = self.args.peers
        if {"nginx", "varnish"} & set(wanted):
            ensure_debian_packages({"nginx": "nginx", "varnishd": "varnish", "curl": "curl"})
        data = ensure_image_file(self.state, self.args.image_size)
        # uWSGI's keep-alive socket pins a thread per open connection, idle or not: with the
        # proxies' upstream pools and the metadata client all connected at once, 2 x 4 threads
        # would measure Glance's accept queue. 2 x 16 leaves room for everyone.
        origin = self._glance("glance-origin", "", close_connections=False, threads=16)
        origin_id = ensure_glance_image(origin, data)
        gcache: GlancePeer | None = None
        if {"glance-cache", "edgecache-gc"} & set(wanted):
            # Glance's best cache-miss setup: devstack's socket, Connection: close
            # (docs/behaviour.md#measuring); cachemanagement = the caching pipeline +
            # DELETE /v2/cache/{id}.
            g = self._glance("glance-cache", "cachemanagement", close_connections=True, threads=4)
            gcache = GlancePeer("glance-cache", g, ensure_glance_image(g, data), caching=True)
        self.origin, self.origin_id, self.gcache = origin, origin_id, gcache
        for name in wanted:
            peer = self._make(name)
            try:
                self.stack.callback(peer.stop)
                peer.start()
            except (StartError, RuntimeError, OSError) as err:
                peer.stop()
                self.skipped[name] = str(err).splitlines()[0] if str(err) else repr(err)
                say(f"{name}: not started, skipped: {err}")
                continue
            self.peers[name] = peer
            pids = ",".join(map(str, peer.pids()))
            say(f"{name}: {peer.url} (pid {pids or '-'}), image {peer.image_id}")
        # Warm the page cache with each Glance's store file before anything is timed.
        for peer in self.peers.values():
            if isinstance(peer, GlancePeer):
                curl_many(peer.file_url, 1, self.timeout)

    def _make(self, name: str) -> Peer:
        origin, image_id, gcache, port = self.origin, self.origin_id, self.gcache, free_port()
        assert origin is not None, "setup() starts the origin first"
        edgecache = REPO / ".venv" / "bin" / "edgecache"
        root = self.state / name
        if name == "glance":
            return GlancePeer("glance", origin, image_id, caching=False)
        if name == "nginx":
            return NginxPeer(root, origin, image_id, port, self.trash)
        if name == "varnish":
            ram = self.args.image_size + GiB  # the image, and room for a refill after a ban
            return VarnishPeer(root, origin, image_id, port, free_port(), ram)
        if name == "edgecache":
            return EdgecachePeer(name, root, origin, image_id, port, self.trash, edgecache)
        assert gcache is not None
        if name == "glance-cache":
            return gcache
        return EdgecachePeer(  # edgecache-gc: in front of the Glance with its own cache
            name, root, gcache.origin, gcache.image_id, port, self.trash, edgecache, gcache
        )

    @property
    def timeout(self) -> float:
        return max(300.0, float(self.args.image_size) / 20e6)

    def measure(self) -> report.Results:
        a = self.args
        settings = Settings(
            a.image_size, self.timeout, a.rate, a.low_rate, a.meta_seconds,
            scratch=self.state / "scratch", discard=self.trash.move, profiler=self.profiler,
        )  # fmt: skip
        records: list[report.Record] = []
        chosen = [s for s in SCENARIOS if s.key in self.args.scenarios]
        for rnd in range(1, self.args.rounds + 1):
            for scn in chosen:
                peers = [p for n, p in self.peers.items() if n in scn.peers]
                groups: list[list[Peer]] = [peers] if scn.together else [[p] for p in peers]
                for group in [[]] if scn.machine else groups:
                    if group or scn.machine:
                        records.extend(self._measure(rnd, scn, group, settings))
        return report.Results(records)

    @staticmethod
    def _measure(
        rnd: int, scn: Scenario, peers: list[Peer], settings: Settings
    ) -> list[report.Record]:
        """Run one measurement; a failing peer must not lose the other peers' figures."""
        if settings.profiler:
            settings.profiler.label = f"{scn.key}-round{rnd}"
        started = time.monotonic()
        try:
            by_peer = scn.measure(peers, settings)
        except Exception as err:
            names = [p.name for p in peers] or [MACHINE]
            for name in names:
                say(f"round {rnd} {scn.key:7} {name:13} ERROR {err}")
            return [report.Record(rnd, scn.key, name, None, str(err)) for name in names]
        took = time.monotonic() - started
        for name, figures in by_peer.items():
            shown = " ".join(f"{k}={v:.4g}" for k, v in figures.items() if v is not None)
            say(f"round {rnd} {scn.key:7} {name:13} {shown} ({took:.1f} s)")
        return [report.Record(rnd, scn.key, name, figs) for name, figs in by_peer.items()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile(16384)  # 200 curls' pipes; the peers inherit it for 2,000 idle connections
    started = datetime.now(UTC)
    bench = Bench(args)
    try:
        say(f"state {bench.state}; image {args.image_size / MiB:.0f} MiB; {args.rounds} round(s)")
        bench.setup()
        results = bench.measure()
    finally:
        say("stopping every process the bench started")
        bench.close()
    peers = [n for n in args.peers if n in bench.peers]
    bars = report.bars(results) if "edgecache" in bench.peers else []
    print(report.table(results, peers, args.rounds))
    for section in (
        report.ceilings_table(results, peers, args.rounds),
        report.cpu_table(results, peers, args.rounds),
        report.scaling_table(results, peers, args.rounds),
    ):
        if section:
            print(section)
    if bars:
        print("\n" + report.bars_table(bars, "edgecache"))
    if bench.skipped:
        print("\nskipped peers: " + "; ".join(f"{k}: {v}" for k, v in bench.skipped.items()))
    for rec in results.errors():
        print(f"error: round {rec.round} {rec.scenario} {rec.peer}: {rec.error}")
    print(
        "loop stall = upper bound of the worst edgecache_event_loop_lag_seconds bucket"
        " between two scrapes ('-' / not measured: no such histogram)"
    )
    meta: dict[str, object] = {
        "started": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.now(UTC) - started).total_seconds(), 1),
        "argv": sys.argv[1:] if argv is None else argv,
        "image_size": args.image_size,
        "rounds": args.rounds,
        "peers": peers,
        "skipped": bench.skipped,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "tools": tool_versions(),
        "profiled": str(args.profile) if args.profile else None,
    }
    if bench.profiler and bench.profiler.files:
        shown = " ".join(p.name for p in bench.profiler.files)
        print(f"\npy-spy profiles in {args.profile}: {shown}")
        print("  top of one: .venv/bin/python -m bench.profile_top FILE [--n 25]")
    name = started.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "") + ".json"
    out = args.results_dir / name
    report.write_json(out, meta, results, bars)
    print(f"\nresults written to {out}")
    return 1 if results.errors() else 0


if __name__ == "__main__":
    sys.exit(main())
