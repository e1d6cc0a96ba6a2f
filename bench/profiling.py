"""`--profile DIR`: a py-spy sampling profile of edgecache while each of its batches runs.

py-spy attaches to the running daemon by pid (ptrace: the bench runs as root), samples every
thread 250 times a second and, stopped with SIGINT, writes collapsed stacks ("raw" format, one
line per distinct stack: `thread (tid): name;frame;...;frame COUNT`). `python -m bench.profile_top
FILE` prints the top of such a file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bench.peers import Peer

RATE = 250  # samples per second


def py_spy() -> str | None:
    """The py-spy next to this interpreter (the bench extra), else one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """Profiles edgecache peers' batches into `directory`; `label` names the next file."""

    def __init__(self, directory: Path, executable: str) -> None:
        self.directory = directory
        self.executable = executable
        self.label = "batch"  # set by the bench before each measurement: <scenario>-round<N>
        self.files: list[Path] = []
        directory.mkdir(parents=True, exist_ok=True)

    def wants(self, peer: Peer) -> bool:
        return peer.name.startswith("edgecache") and bool(peer.pids())

    @contextlib.contextmanager
    def batch(self, peer: Peer) -> Iterator[None]:
        """Sample `peer` while the block runs; a failing py-spy costs the profile, not the run."""
        if not self.wants(peer):
            yield
            return
        prefix = "" if peer.name == "edgecache" else f"{peer.name}-"
        out = self.directory / f"{prefix}{self.label}.txt"
        log = out.with_suffix(".log")
        argv = [
            self.executable, "record", "--pid", str(peer.pids()[0]), "--rate", str(RATE),
            "--format", "raw", "--threads", "-o", str(out),
        ]  # fmt: skip
        with log.open("wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        try:
            _wait_sampling(proc, log)
            yield
        finally:
            stop(proc)
        if out.exists():
            self.files.append(out)


def _wait_sampling(proc: subprocess.Popen[bytes], log: Path, timeout: float = 10.0) -> None:
    """Until py-spy says it samples (attaching takes a moment), so the batch is covered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if b"Sampling process" in log.read_bytes():
            return
        time.sleep(0.02)


def stop(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """SIGINT by pid: py-spy writes its file on the way out; killed if it does not exit."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
