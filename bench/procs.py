"""Process plumbing for the benchmark: weigh the peers' memory and CPU, move emptied caches aside.

The servers themselves are `lab.procs.Process`es, stopped by the pid they were started with.
"""

from __future__ import annotations

import contextlib
import resource
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import psutil


def process_tree(roots: Iterable[int]) -> list[int]:
    """The roots and all their descendants that still run."""
    found: list[int] = []
    for pid in roots:
        try:
            root = psutil.Process(pid)
            found += [root.pid, *(child.pid for child in root.children(recursive=True))]
        except psutil.NoSuchProcess:
            continue
    return found


def rss_bytes(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):  # exited between scan and read
            total += int(psutil.Process(pid).memory_info().rss)
    return total


class RssSampler:
    """Peak resident memory of a process tree, sampled every 50 ms while a scenario runs.

    The tree is rescanned once a second only: a full process scan every 50 ms would steal CPU from
    the peer being measured on a 2-core box.
    """

    def __init__(self, roots: Sequence[int], interval: float = 0.05) -> None:
        self.roots = list(roots)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        pids = process_tree(self.roots)
        rescan = time.monotonic() + 1.0
        while not self._stop.is_set():
            if time.monotonic() > rescan:
                pids, rescan = process_tree(self.roots), time.monotonic() + 1.0
            self.peak = max(self.peak, rss_bytes(pids))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        if self.roots:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


class Trash:
    """Where emptied caches go: moved aside (a rename) instead of deleted.

    Deleting a multi-GiB file blocks and hands its page-cache memory back to the host, which makes
    the next fill several times slower on these VMs (docs/behaviour.md#measuring). Old entries are
    deleted in the background only once the trash grows past `cap` bytes, and the rest at the end.
    """

    def __init__(self, root: Path, cap: int) -> None:
        self.root = root
        self.cap = cap
        self.root.mkdir(parents=True, exist_ok=True)
        self._entries: list[tuple[Path, int]] = []
        self._removers: list[subprocess.Popen[bytes]] = []
        self._seq = 0

    def move(self, path: Path) -> None:
        if not path.exists():
            return
        self._seq += 1
        dest = self.root / f"{self._seq:04d}-{path.name}"
        path.rename(dest)
        self._entries.append((dest, du(dest)))
        while len(self._entries) > 1 and sum(size for _, size in self._entries) > self.cap:
            old, _ = self._entries.pop(0)
            self._removers.append(subprocess.Popen(["rm", "-rf", "--", str(old)]))

    def empty(self) -> None:
        """Delete everything and wait for it: nothing the bench started may outlive it."""
        for proc in self._removers:
            proc.wait()
        self._removers.clear()
        self._entries.clear()
        subprocess.run(["rm", "-rf", "--", str(self.root)], check=False)
        self.root.mkdir(parents=True, exist_ok=True)


def du(path: Path) -> int:
    """Bytes under `path` (files only)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """User + system CPU seconds of each process that still runs (its threads included)."""
    out = {}
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
    return out


def box_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (every core; idle, iowait and steal excluded)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def _rusage_seconds(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


class CpuMeter:
    """CPU seconds spent during a batch: by named process trees, the clients, the bench, the box.

    Trees are weighed by their members' own counters, read before and after (a member that exits
    during the batch takes its seconds with it). The clients are the bench's child processes
    reaped during the batch (curl: `RUSAGE_CHILDREN`); `bench` is this process itself (the RSS
    sampler, curl's launch); `box` is every core's busy time, whoever spent it.
    """

    def __init__(self, trees: Mapping[str, Sequence[int]]) -> None:
        self.trees = {name: list(roots) for name, roots in trees.items()}
        self.seconds: dict[str, float] = {}
        self._before: dict[str, dict[int, float]] = {}
        self._base: dict[str, float] = {}

    def _totals(self) -> dict[str, float]:
        return {
            "clients": _rusage_seconds(resource.RUSAGE_CHILDREN),
            "bench": _rusage_seconds(resource.RUSAGE_SELF),
            "box": box_busy_seconds(),
        }

    def __enter__(self) -> CpuMeter:
        self._before = {n: cpu_seconds(process_tree(r)) for n, r in self.trees.items()}
        self._base = self._totals()
        return self

    def __exit__(self, *exc: object) -> None:
        totals = self._totals()
        for name, roots in self.trees.items():
            before = self._before[name]
            after = cpu_seconds(process_tree(roots))
            self.seconds[name] = sum(v - before.get(pid, 0.0) for pid, v in after.items())
        for name, value in totals.items():
            self.seconds[name] = value - self._base[name]
