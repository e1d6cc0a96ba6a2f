"""What this machine can do at all, measured in the same run as the peers: the miss path's ceilings.

A verified cold miss must read the image from Glance, hash every byte (sha512) and write every byte
to disk; each of those is a stage every byte passes through, so the miss cannot be faster than the
slowest of them. The bench measures each stage alone, here and now, and reports the cache's cold
miss as a fraction of that bound (bench/README.md#ceilings).

Each stage runs in a child process (`python -m bench.ceilings MODE ...`) so that it has a core to
itself rather than competing with the bench's own threads for the GIL; the child times itself and
prints one number (GB/s, 10^9 bytes/s).
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from lab.units import GiB, MiB

REPO = Path(__file__).resolve().parents[1]
CHUNK = 4 * MiB  # what a fill hands to write and hash at a time (docs: 1-4 MiB chunks)
SHA512_BYTES = 1 * GiB
LOOPBACK_BYTES = 2 * GiB
#: the stages of a verified miss, by figure name: the ceiling is the slowest of them
MISS_STAGES = ("glance_direct_gbps", "sha512_gbps", "disk_write_gbps")


def verified_miss_ceiling(figures: Mapping[str, float | None]) -> tuple[float, str] | None:
    """The slowest stage every byte of a verified miss must pass through, and its name.

    None unless every stage was measured: a bound over fewer stages would flatter the cache.
    """
    stages = [(figures.get(name), name) for name in MISS_STAGES]
    known = [(v, name) for v, name in stages if v is not None and v > 0]
    if len(known) < len(MISS_STAGES):
        return None
    return min(known)


# -- the measurements, each in a child process -------------------------------------------------


def _child(*args: str, timeout: float = 300.0) -> float:
    argv = [sys.executable, "-m", "bench.ceilings", *args]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.ceilings {' '.join(args)}: {done.stderr.strip()[-300:]}")
    return float(done.stdout.split()[-1])


def sha512_gbps(size: int = SHA512_BYTES) -> float:
    """hashlib sha512 on one core, in CHUNK updates over a buffer already in memory."""
    return _child("sha512", str(size))


def disk_write_gbps(directory: Path, size: int, discard: Callable[[Path], None]) -> float:
    """Write an image-sized file in CHUNK writes and fdatasync it; `discard` disposes of it.

    The file is handed to `discard` (the bench's trash) rather than unlinked here: deleting GiBs
    returns page-cache memory to the host and slows the next fill (bench/README.md).
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"ceiling-write-{os.getpid()}.bin"
    try:
        return _child("disk", str(path), str(size))
    finally:
        if path.exists():
            discard(path)


def loopback_gbps(size: int = LOOPBACK_BYTES) -> float:
    """One TCP stream over 127.0.0.1 between two processes: 1 MiB sends, recv_into 1 MiB."""
    argv = [sys.executable, "-m", "bench.ceilings", "recv", str(size)]
    receiver = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert receiver.stdout is not None
        port = receiver.stdout.readline().strip()
        _child("send", port, str(size))
        out, _ = receiver.communicate(timeout=120)
        if receiver.returncode != 0:
            raise RuntimeError(f"bench.ceilings recv exited {receiver.returncode}")
        return float(out.split()[-1])
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()


def measure(scratch: Path, image_size: int, discard: Callable[[Path], None]) -> dict[str, float]:
    """Every machine ceiling but direct Glance (the `glance` peer's cold1 figure is that one)."""
    return {
        "sha512_gbps": sha512_gbps(),
        "disk_write_gbps": disk_write_gbps(scratch, image_size, discard),
        "loopback_gbps": loopback_gbps(),
    }


# -- child side --------------------------------------------------------------------------------


def _run_sha512(size: int) -> float:
    buf = memoryview(os.urandom(64 * MiB))
    h = hashlib.sha512()
    done, started = 0, time.perf_counter()
    while done < size:
        offset = done % len(buf)
        n = min(CHUNK, size - done, len(buf) - offset)
        h.update(buf[offset : offset + n])
        done += n
    h.digest()
    return size / (time.perf_counter() - started) / 1e9


def _run_disk(path: Path, size: int) -> float:
    chunk = memoryview(os.urandom(CHUNK))
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        done = 0
        while done < size:
            done += os.write(fd, chunk[: min(CHUNK, size - done)])
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return size / (time.perf_counter() - started) / 1e9


def _run_recv(size: int) -> float:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        print(listener.getsockname()[1], flush=True)
        conn, _ = listener.accept()
    with conn:
        buf = bytearray(MiB)
        got, started = 0, time.perf_counter()
        while got < size:
            n = conn.recv_into(buf)
            if not n:
                raise RuntimeError(f"sender closed after {got} of {size} bytes")
            got += n
        return size / (time.perf_counter() - started) / 1e9


def _run_send(port: int, size: int) -> float:
    data = memoryview(bytes(MiB))
    with socket.create_connection(("127.0.0.1", port)) as conn:
        sent, started = 0, time.perf_counter()
        while sent < size:
            n = min(MiB, size - sent)
            conn.sendall(data[:n])
            sent += n
        return size / (time.perf_counter() - started) / 1e9


def main(argv: list[str]) -> int:
    mode, *rest = argv
    if mode == "sha512":
        value = _run_sha512(int(rest[0]))
    elif mode == "disk":
        value = _run_disk(Path(rest[0]), int(rest[1]))
    elif mode == "recv":
        value = _run_recv(int(rest[0]))
    elif mode == "send":
        value = _run_send(int(rest[0]), int(rest[1]))
    else:
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    print(f"{value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
