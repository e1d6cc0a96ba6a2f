"""Idle keep-alive connections held open to a peer while a batch runs (`hit8-idle2000`).

A child process (`python -m bench.idle PORT N`) opens N connections, 32 at a time, sends a
complete `GET /healthcheck` on each, reads the answer, then leaves the connection idle, as a
kept-alive client between requests does. Each peer answers its health check itself (edgecache's
own; a fixed 200 in the nginx and Varnish configs), so opening 2,000 costs the origin nothing.
When told to stop it counts how many the peer still holds open, then closes them all.
"""

from __future__ import annotations

import contextlib
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUEST = b"GET /healthcheck HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench-idle\r\n\r\n"


@dataclass
class Held:
    wanted: int
    opened: int = 0  # connections that got their answer and were left idle
    open_after: int | None = None  # of those, still open when the batch was over


@contextlib.contextmanager
def idle_connections(port: int, count: int, timeout: float = 180.0) -> Iterator[Held]:
    """Hold `count` idle keep-alive connections to 127.0.0.1:`port` while the block runs."""
    held = Held(count)
    argv = [sys.executable, "-m", "bench.idle", str(port), str(count)]
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline().split() if ready else []
        if len(line) != 2 or line[0] != "ready":
            raise RuntimeError(f"bench.idle did not get ready: {line or 'timeout'}")
        held.opened = int(line[1])
        if held.opened < count:
            raise RuntimeError(f"only {held.opened} of {count} idle connections opened")
        yield held
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline().split() if ready else []
        if len(line) == 2 and line[0] == "open":
            held.open_after = int(line[1])
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def raise_nofile(at_least: int) -> None:
    """Raise the soft open-files limit to `at_least` (capped by the hard limit) if it is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = at_least if hard == resource.RLIM_INFINITY else min(at_least, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _answer(sock: socket.socket) -> None:
    """Read one response (headers and a Content-Length body) so the connection is between
    requests."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the answer")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed during the body")
        body += chunk


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)  # a socket with a timeout would poll for it before recv
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True  # nothing to read and not closed: still held
    except OSError:
        return False


def _open(port: int) -> socket.socket | None:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError as err:
        print(f"bench.idle: connect: {err}", file=sys.stderr)
        return None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(REQUEST)
        _answer(sock)
    except OSError as err:
        print(f"bench.idle: request: {err}", file=sys.stderr)
        sock.close()
        return None
    return sock


def main(argv: list[str]) -> int:
    port, count = int(argv[0]), int(argv[1])
    raise_nofile(count + 256)
    # 32 at a time: one by one, a server's delayed ACKs make 2,000 take a minute; all at once
    # would overflow the listen backlog (the peer would see a connect storm, not idle clients)
    started = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        socks = [s for s in pool.map(lambda _: _open(port), range(count)) if s is not None]
    print(f"bench.idle: {len(socks)} open in {time.monotonic() - started:.1f} s", file=sys.stderr)
    print(f"ready {len(socks)}", flush=True)
    sys.stdin.readline()
    print(f"open {sum(map(_still_open, socks))}", flush=True)
    for sock in socks:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
