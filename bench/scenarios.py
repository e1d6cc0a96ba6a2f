"""One function per quality-bar measurement; each takes a peer and returns plain figures.

Figures are flat dicts of numbers (or None for "does not apply") so the report and the JSON file
need no knowledge of the scenario that made them. The bars: docs/behaviour.md#quality-bars.
"""

from __future__ import annotations

import contextlib
import math
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench import ceilings
from bench.clients import TAG, Batch, Latencies, curl_many, outside_origin, paced_gets
from bench.idle import idle_connections
from bench.peers import Peer
from bench.procs import CpuMeter, RssSampler
from bench.profiling import Profiler
from lab.units import MiB

if TYPE_CHECKING:
    from lab.glance import LocalGlance

Figures = dict[str, float | None]


@dataclass(frozen=True)
class Settings:
    image_size: int
    curl_timeout: float
    rate: float  # metadata requests per second (the bar's 200)
    low_rate: float  # a rate direct Glance sustains easily here, to tell overhead from queueing
    duration: float  # seconds of paced metadata requests per peer and round
    scratch: Path | None = None  # where the disk ceiling writes its image-sized file
    discard: Callable[[Path], None] | None = None  # how it disposes of it (the bench's trash)
    profiler: Profiler | None = None  # --profile: py-spy on edgecache during each batch


def _batch_figures(batch: Batch, size: int, rss: RssSampler | None) -> Figures:
    failures = batch.failures(size)
    if failures:
        shown = ", ".join(failures[:5])
        raise RuntimeError(f"{len(failures)} of {len(batch.fetches)} downloads failed: {shown}")
    return {
        "gbps": batch.gbps,
        "slowest_first_byte_ms": batch.slowest_first_byte * 1000,
        "seconds": batch.span,
        "launch_spread_s": batch.launch_spread,
        "peak_rss_mib": rss.peak / MiB if rss and rss.peak else None,
    }


@dataclass
class Watch:
    """What is recorded while one batch runs: memory, CPU (and, with --profile, py-spy)."""

    rss: RssSampler
    cpu: CpuMeter

    def figures(self, batch: Batch, size: int) -> Figures:
        figures = _batch_figures(batch, size, self.rss)
        figures.update(cpu_figures(self.cpu.seconds, len(batch.fetches) * size, batch.span))
        return figures


@contextlib.contextmanager
def watching(peer: Peer, s: Settings) -> Iterator[Watch]:
    """Sample the peer's RSS and weigh everyone's CPU around the block (py-spy outermost)."""
    mine = peer.pids()
    origin = [] if peer.origin.pid in mine or peer.origin.pid is None else [peer.origin.pid]
    profile = s.profiler.batch(peer) if s.profiler else contextlib.nullcontext()
    trees = {"peer": mine, "origin": origin} if origin else {"peer": mine}
    with profile, CpuMeter(trees) as cpu, RssSampler(mine) as rss:
        yield Watch(rss, cpu)


CPU_PARTS = ("peer", "origin", "clients", "bench")


def cpu_figures(seconds: dict[str, float], size: int, span: float) -> Figures:
    """CPU seconds per GB delivered to the clients, per part, and how many cores were busy.

    `other` is the box's busy time no part accounts for (kernel threads, other work on the
    machine, py-spy under --profile).
    """
    gb = size / 1e9
    out: Figures = {f"cpu_{k}_s_per_gb": seconds[k] / gb for k in CPU_PARTS if k in seconds}
    if "box" in seconds:
        out["cpu_box_s_per_gb"] = seconds["box"] / gb
        parts = sum(seconds.get(k, 0.0) for k in CPU_PARTS)
        out["cpu_other_s_per_gb"] = (seconds["box"] - parts) / gb
        out["cpu_box_cores"] = seconds["box"] / span if span > 0 else None
    return out


def batch_timeout(s: Settings, clients: int) -> float:
    """curl's --max-time: the run's, or enough for `clients` images at 0.5 GB/s in all."""
    return max(s.curl_timeout, clients * s.image_size / 0.5e9)


def hits(peer: Peer, clients: int, s: Settings, warm: bool) -> Figures:
    """Hit throughput and fairness: the image is in the cache (or page cache) before we start."""
    if warm:
        _batch_figures(curl_many(peer.file_url, 1, s.curl_timeout), s.image_size, None)
    lag = peer.loop_lag_buckets()
    with watching(peer, s) as watch:
        batch = curl_many(peer.file_url, clients, batch_timeout(s, clients))
    figures = watch.figures(batch, s.image_size)
    figures["loop_stall_ms"] = worst_lag_ms(lag, peer.loop_lag_buckets())
    return figures


def cold(peer: Peer, clients: int, s: Settings) -> Figures:
    """Cold requests: empty the cache, then `clients` ask at once; count the origin's data GETs."""
    peer.empty_cache()
    before, lag = peer.upstream_gets(), peer.loop_lag_buckets()
    with watching(peer, s) as watch:
        batch = curl_many(peer.file_url, clients, batch_timeout(s, clients))
    figures = watch.figures(batch, s.image_size)
    figures["upstream_gets"] = _settled(peer, before)
    time.sleep(0.05)  # let the lag sampler observe the last commit (fsync + rename)
    figures["loop_stall_ms"] = worst_lag_ms(lag, peer.loop_lag_buckets())
    return figures


def hits_idle(peer: Peer, clients: int, idle: int, s: Settings) -> Figures:
    """Hits by `clients` while `idle` kept-alive connections sit open on the peer."""
    port = int(peer.url.rsplit(":", 1)[1].rstrip("/"))
    with idle_connections(port, idle) as held:
        figures = hits(peer, clients, s, warm=False)
    figures["idle_opened"] = float(held.opened)
    figures["idle_open_after"] = None if held.open_after is None else float(held.open_after)
    return figures


def worst_lag_ms(
    before: dict[float, float] | None, after: dict[float, float] | None
) -> float | None:
    """Upper bound of the histogram bucket holding the worst loop lag seen between two scrapes.

    A histogram keeps no maximum, so this is "at most" (the bars' 25 and 50 ms are bucket bounds);
    a lag past the last finite bound is reported as that bound.
    """
    if before is None or after is None:
        return None
    new = {le: count - before.get(le, 0.0) for le, count in after.items()}
    total = new.get(math.inf, 0.0)
    if total <= 0:
        return None
    finite = [le for le in sorted(new) if le != math.inf]
    for le in finite:
        if new[le] >= total:
            return le * 1000
    return finite[-1] * 1000 if finite else None


def _settled(peer: Peer, before: int | None) -> float | None:
    """Origin GETs during the batch: wait for the first log line, then for stragglers to settle.

    Glance logs a request when its body is sent, which can be a moment after the client is done.
    """
    if before is None:
        return None
    after = peer.upstream_gets(at_least=before + 1) or 0
    for _ in range(5):
        time.sleep(0.2)
        again = peer.upstream_gets() or 0
        if again == after:
            break
        after = again
    return float(after - before)


def machine_ceilings(s: Settings) -> Figures:
    """sha512 on one core, disk write + fdatasync, loopback TCP: this round's machine limits."""
    assert s.scratch is not None and s.discard is not None, "the bench sets both"
    figures: Figures = dict(ceilings.measure(s.scratch, s.image_size, s.discard))
    return figures


def passthrough(peers: list[Peer], rate: float, duration: float) -> dict[str, Figures]:
    """Metadata GET latency at a fixed request rate, the peers taking turns second by second:
    end to end (``p50_ms``, ``p99_ms``) and outside the origin's own time for each request
    (``own_p50_ms``, ``own_p99_ms``: clients.outside_origin)."""
    lats = paced_gets({p.name: p.meta_url for p in peers}, rate, duration)
    msecs = _origin_msecs(peers[0].origin, sum(len(lat.by_tag) for lat in lats.values()))
    out: dict[str, Figures] = {}
    for name, lat in lats.items():
        own = _latency_figures(outside_origin(lat, msecs))
        out[name] = {
            **_latency_figures(lat),
            "late": float(lat.late),
            "own_p50_ms": own["p50_ms"],
            "own_p99_ms": own["p99_ms"],
            "unmatched": (own["errors"] or 0.0) - lat.errors,  # answered, but not logged
        }
    return out


def _origin_msecs(origin: LocalGlance, expected: int, timeout: float = 5.0) -> dict[str, int]:
    """Tag -> the origin's logged msecs of each tagged request (its first line per tag).

    uWSGI logs a request once its response is sent, a moment after the client has it: wait
    until every tagged request is in, or ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, int] = {}
        for record in origin.request_log():
            tags = urllib.parse.parse_qs(record.query).get(TAG)
            if tags:
                found.setdefault(tags[0], record.msecs)
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _latency_figures(lat: Latencies) -> Figures:
    return {
        "p50_ms": lat.quantile(0.5) * 1000 if lat.by_tag else None,
        "p99_ms": lat.quantile(0.99) * 1000 if lat.by_tag else None,
        "requests": float(len(lat.by_tag)),
        "errors": float(lat.errors),
    }


@dataclass(frozen=True)
class Scenario:
    """A named measurement and the peers it applies to (by peer name, in run order)."""

    key: str
    title: str
    run: Callable[[Peer, Settings], Figures] | None  # one peer at a time
    peers: tuple[str, ...]
    together: Callable[[list[Peer], Settings], dict[str, Figures]] | None = None  # all at once
    machine: Callable[[Settings], Figures] | None = None  # no peer: recorded as peer "machine"
    default: bool = True  # False: heavy, run only when --scenarios names it

    def measure(self, peers: list[Peer], s: Settings) -> dict[str, Figures]:
        if self.machine:
            return {MACHINE: self.machine(s)}
        if self.together:
            return self.together(peers, s)
        assert self.run is not None
        return {p.name: self.run(p, s) for p in peers}


MACHINE = "machine"  # the pseudo-peer of machine-wide figures (the ceilings)
CACHES = ("nginx", "varnish", "glance-cache", "edgecache", "edgecache-gc")
EVERYONE = ("glance", *CACHES)
# uWSGI (both Glances) pins a thread per open connection: 2,000 idle ones would starve it by design
EVENT_DRIVEN = ("nginx", "varnish", "edgecache", "edgecache-gc")
IDLE = 2000
META_PEERS = ("glance", "nginx", "edgecache")  # direct, a plain reverse proxy, us

SCENARIOS = (
    Scenario("ceilings", "machine ceilings", None, (), machine=machine_ceilings),
    Scenario("cold1", "cold miss, 1 client", lambda p, s: cold(p, 1, s), EVERYONE),
    Scenario("hit1", "hit, 1 client", lambda p, s: hits(p, 1, s, warm=True), EVERYONE),
    Scenario("hit8", "hit, 8 clients", lambda p, s: hits(p, 8, s, warm=False), EVERYONE),
    Scenario("hit50", "hit, 50 clients", lambda p, s: hits(p, 50, s, warm=False), EVERYONE),
    Scenario(
        "hit200",
        "hit, 200 clients",
        lambda p, s: hits(p, 200, s, warm=False),
        EVERYONE,
        default=False,
    ),
    Scenario(
        f"hit8-idle{IDLE}",
        f"hit, 8 clients, {IDLE:,} idle keep-alive connections open",
        lambda p, s: hits_idle(p, 8, IDLE, s),
        EVENT_DRIVEN,
    ),
    Scenario("cold8", "8 concurrent cold requests", lambda p, s: cold(p, 8, s), CACHES),
    Scenario("cold50", "50 concurrent cold requests", lambda p, s: cold(p, 50, s), CACHES),
    Scenario(
        "cold200",
        "200 concurrent cold requests",
        lambda p, s: cold(p, 200, s),
        CACHES,
        default=False,
    ),
    Scenario(
        "meta",
        "metadata GET passthrough at --rate",
        None,
        META_PEERS,
        together=lambda peers, s: passthrough(peers, s.rate, s.duration),
    ),
    Scenario(
        "meta-low",
        "metadata GET passthrough at --low-rate",
        None,
        META_PEERS,
        together=lambda peers, s: passthrough(peers, s.low_rate, s.duration),
    ),
)
