"""Hostile clients against the running daemon, while a real client downloads.

Oversized headers, an overlong request id, a slow-headers client, 2,000 idle
connections and garbage ``Range`` values each get a clear 4xx or a connection
closed after ``client_socket_timeout``; meanwhile a well-formed, authenticated
download that started before them finishes with Glance's sha512, and new
requests keep being answered promptly.

See docs/behaviour.md#hostile-clients.
"""

from __future__ import annotations

import contextlib
import hashlib
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests

from lab.edgecache import EdgecacheProcess
from lab.httpclient import raw_request
from lab.polling import wait_until
from tests.keystone.conftest import DaemonFactory, Image, World

CLIENT_SOCKET_TIMEOUT = 3
IDLE_CONNECTIONS = 2000
IMAGE_SIZE = 24 << 20


@dataclass
class SlowDownload:
    """A GET read at a trickle until released, then to its end; its digest at the end."""

    url: str
    token: str
    release: threading.Event = field(default_factory=threading.Event)
    digest: str | None = None
    status: int | None = None
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with requests.get(self.url, headers={"X-Auth-Token": self.token}, stream=True,
                              timeout=60) as response:
                self.status = response.status_code
                sha = hashlib.sha512()
                for chunk in response.iter_content(64 * 1024):
                    sha.update(chunk)
                    if not self.release.is_set():
                        time.sleep(0.05)
                self.digest = sha.hexdigest()
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self) -> str | None:
        self.release.set()
        assert self.thread is not None
        self.thread.join(60)
        assert not self.thread.is_alive(), "the download hung"
        assert self.error is None, repr(self.error)
        assert self.status == 200
        return self.digest


@pytest.fixture(scope="module")
def setting(world: World, start_daemon: DaemonFactory) -> Iterator[tuple[EdgecacheProcess, Image]]:
    daemon = start_daemon(default={"client_socket_timeout": str(CLIENT_SOCKET_TIMEOUT)})
    image = world.new_image("alice", size=IMAGE_SIZE, visibility="private")
    yield daemon, image
    assert daemon.running, daemon.log_text()[-3000:]


@pytest.fixture
def download(world: World, setting: tuple[EdgecacheProcess, Image]) -> Iterator[SlowDownload]:
    """Started before the hostile client acts; its hash is checked after it is done."""
    daemon, image = setting
    slow = SlowDownload(daemon.url + image.path, world.token("alice"))
    slow.start()
    wait_until(lambda: slow.status is not None, "the download to start", timeout=30)
    yield slow
    assert slow.finish() == image.sha512


def _prompt(daemon: EdgecacheProcess, world: World, image: Image) -> None:
    """Others are still served, quickly: a version document and a whole image."""
    started = time.monotonic()
    assert requests.get(daemon.url + "/versions", timeout=10).status_code == 200
    got = requests.get(daemon.url + image.path, headers={"X-Auth-Token": world.token("alice")},
                       timeout=30)
    assert got.status_code == 200
    assert hashlib.sha512(got.content).hexdigest() == image.sha512
    assert time.monotonic() - started < 10


def _closed_by_peer(sock: socket.socket, within: float) -> float | None:
    """Seconds until the server closes ``sock`` (EOF or reset), or None if it did not."""
    started = time.monotonic()
    sock.settimeout(max(0.0, within))
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return None
    except ConnectionResetError:
        return time.monotonic() - started
    assert data == b"", data[:200]
    return time.monotonic() - started


def test_oversized_headers_and_request_ids(
    world: World, setting: tuple[EdgecacheProcess, Image], download: SlowDownload
) -> None:
    daemon, image = setting
    token = world.token("alice")
    for headers in (
        {"X-Auth-Token": token, "X-Padding": "p" * 20000},
        {"X-Auth-Token": token, "X-" + "n" * 20000: "v"},
        {"X-Auth-Token": "t" * 70000},
        {f"X-Many-{i}": "v" * 100 for i in range(400)},
    ):
        answer = raw_request(daemon.port, image.path, headers=headers)
        assert answer.status in (400, 413, 431), answer
        assert image.data[:64] not in answer.body
    for request_id in ("r" * 65, "req-" + "x" * 1000):
        answer = raw_request(daemon.port, image.path,
                             headers={"X-Auth-Token": token, "X-OpenStack-Request-ID": request_id})
        assert answer.status == 431, answer
        assert answer.headers["content-type"].startswith("application/json")
    _prompt(daemon, world, image)


def test_slow_headers_client_is_cut_off(
    world: World, setting: tuple[EdgecacheProcess, Image], download: SlowDownload
) -> None:
    daemon, image = setting
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
        sock.sendall(f"GET {image.path} HTTP/1.1\r\nHost: edge\r\n".encode())
        started = time.monotonic()
        closed_after: float | None = None
        while closed_after is None and time.monotonic() - started < CLIENT_SOCKET_TIMEOUT + 5:
            try:
                sock.sendall(b"X-Slow: 1\r\n")  # a header line every half second, never done
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
                break
            waited = _closed_by_peer(sock, 0.5)
            if waited is not None:
                closed_after = time.monotonic() - started
        assert closed_after is not None, "a slow-headers client held its connection"
        assert CLIENT_SOCKET_TIMEOUT - 1 <= closed_after <= CLIENT_SOCKET_TIMEOUT + 3
    _prompt(daemon, world, image)


def test_two_thousand_idle_connections(
    world: World, setting: tuple[EdgecacheProcess, Image], download: SlowDownload
) -> None:
    daemon, image = setting
    idle: list[socket.socket] = []
    try:
        opened = time.monotonic()
        for _ in range(IDLE_CONNECTIONS):
            idle.append(socket.create_connection(("127.0.0.1", daemon.port), timeout=10))
        _prompt(daemon, world, image)  # others are served while they sit there

        selector = selectors.DefaultSelector()
        for sock in idle:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        closed = 0
        deadline = opened + CLIENT_SOCKET_TIMEOUT + 15
        while closed < len(idle) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1):
                ready = key.fileobj
                assert isinstance(ready, socket.socket), ready
                with contextlib.suppress(ConnectionResetError):
                    assert ready.recv(1024) == b""
                selector.unregister(ready)
                closed += 1
        selector.close()
        assert closed == len(idle), f"only {closed} of {len(idle)} idle connections closed"
    finally:
        for sock in idle:
            sock.close()
    _prompt(daemon, world, image)


GARBAGE_RANGES = [
    "bytes=abc", "bytes=--1", "bytes=1-2-3", "bytes=-", "bytes=", "bytes 0-1", "0-1",
    "bytes=0-1,2-3", "bytes=99999999999999999999999999-", f"bytes={IMAGE_SIZE}-",
    "bytes=5-4", "bytes=-0", "pages=0-1", "bytes=\x7f", "bytes=0x10-0x20",
    "bytes=٣-٤".encode().decode("latin-1"),  # Arabic-Indic digits, as UTF-8 on the wire
    "bytes=" + "9" * 5000 + "-", "=" * 3000, "bytes=1-2 junk",
]


def test_garbage_ranges_are_client_errors(
    world: World, setting: tuple[EdgecacheProcess, Image], download: SlowDownload
) -> None:
    daemon, image = setting
    token = world.token("alice")
    for value in GARBAGE_RANGES:
        answer = raw_request(daemon.port, image.path, headers={"X-Auth-Token": token,
                                                                "Range": value})
        assert answer.status in (400, 416), (value[:40], answer.status, answer.body[:200])
        assert image.data[:64] not in answer.body
        legacy = raw_request(daemon.port, image.path,
                             headers={"X-Auth-Token": token, "Content-Range": value})
        assert legacy.status in (400, 416), (value[:40], legacy.status)
    _prompt(daemon, world, image)
