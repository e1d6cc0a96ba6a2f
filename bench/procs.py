"""Process plumbing for the benchmark: start daemons we own, stop them by pid, weigh their memory.

Every server the bench starts is a `Daemon`, so the run's `finally` can stop exactly the processes
it started (by pid, never by name) and nothing outlives the run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


class StartError(RuntimeError):
    """A peer did not come up; the run reports it as skipped instead of failing every other peer."""


class Daemon:
    """A server process started by the bench, its output in a log file, stopped by its own pid."""

    def __init__(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            # A session of its own so a Ctrl-C on the bench does not kill it before `stop` runs.
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        return self.proc.pid

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Ask politely, then kill; always reap, so no zombie is left behind."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(10)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_http(url: str, timeout: float, alive: Daemon | None = None) -> int:
    """Wait until something answers HTTP at `url` (any status); fail early if the daemon died."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None and not alive.running():
            raise StartError(f"exited while starting:\n{alive.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return err.code
        except OSError:
            if time.monotonic() > deadline:
                tail = alive.log_tail() if alive else ""
                raise StartError(f"no answer from {url} after {timeout:.0f} s\n{tail}") from None
            time.sleep(0.1)


def process_tree(roots: Iterable[int]) -> list[int]:
    """The roots and all their descendants (this kernel has no /proc/PID/task/TID/children)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    seen: list[int] = []
    todo = [pid for pid in roots if Path(f"/proc/{pid}").exists()]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.append(pid)
            todo.extend(children.get(pid, []))
    return seen


def rss_bytes(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue  # exited between the scan and the read
    return total


class RssSampler:
    """Peak resident memory of a process tree, sampled every 50 ms while a scenario runs.

    The tree is rescanned once a second only: a full /proc scan every 50 ms would steal CPU from the
    peer being measured on a 2-core box.
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
    the next fill several times slower on these VMs (perf-anchors.md, lesson 10). Old entries are
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
