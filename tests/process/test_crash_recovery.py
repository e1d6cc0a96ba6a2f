"""Durability across kill -9 and clean restarts (docs/behaviour.md#durability).

The daemon runs as its own process (``edgecache serve --config-file``), in front of a
FaultyGlance in thread mode; every check is made from outside, the way an operator
or Nova would see it: HTTP answers, the files under the cache directory, and the
requests upstream Glance received.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from lab.edgecache import EdgecacheProcess, metric_value
from lab.polling import wait_until
from lab.units import MiB
from tests.support.faultyglance import Fault, FaultyGlance


@pytest.fixture
def glance() -> Iterator[FaultyGlance]:
    with FaultyGlance() as server:
        yield server


@pytest.fixture
def daemon(glance: FaultyGlance, tmp_path: Path) -> Iterator[EdgecacheProcess]:
    with EdgecacheProcess(tmp_path / "edgecache", glance_endpoints=[glance.url]) as running:
        yield running


def file_path(image_id: str) -> str:
    return f"/v2/images/{image_id}/file"


def fetch_verified(daemon: EdgecacheProcess, glance: FaultyGlance, image_id: str) -> None:
    """GET the image through the daemon; it must be whole and hash to Glance's record."""
    meta = glance.metadata(image_id)
    with requests.get(daemon.url + file_path(image_id), stream=True, timeout=30) as response:
        assert response.status_code == 200, response.text[:500]
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert int(response.headers["Content-Length"]) == meta["size"]
        assert response.headers["Content-MD5"] == meta["checksum"]
        digest = hashlib.sha512()
        size = 0
        for chunk in response.iter_content(1 * MiB):
            digest.update(chunk)
            size += len(chunk)
    assert size == meta["size"]
    assert digest.hexdigest() == meta["os_hash_value"]


def wait_committed(daemon: EdgecacheProcess, image_id: str, occurrences: int = 1) -> None:
    """The daemon logs ``committed image <id>`` once the file is renamed and indexed."""
    wait_until(
        lambda: daemon.log_text().count(f"committed image {image_id}") >= occurrences,
        f"image {image_id} to be committed",
    )
    assert (daemon.data_dir / image_id).is_file()


def partials(daemon: EdgecacheProcess, image_id: str | None = None) -> list[Path]:
    pattern = f"{image_id}.*" if image_id else "*"
    return sorted(daemon.incomplete_dir.glob(pattern))


@dataclass
class RawDownload:
    """A blocking client that reads one image response off a socket until EOF or reset."""

    port: int
    image_id: str
    status: int | None = None
    content_length: int | None = None
    received: int = 0
    ended_by: str = ""
    first_bytes: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:
            self.ended_by = f"error: {exc!r}"
        finally:
            self.done.set()

    def _run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(
                f"GET {file_path(self.image_id)} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{self.port}\r\n\r\n".encode()
            )
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    self.ended_by = "eof before headers"
                    return
                buffer += chunk
            head, _, rest = buffer.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            self.status = int(lines[0].split()[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    self.content_length = int(value)
            self.received = len(rest)
            if self.received:
                self.first_bytes.set()
            while True:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    self.ended_by = "reset"
                    return
                if not chunk:
                    self.ended_by = "eof"
                    return
                self.received += len(chunk)
                self.first_bytes.set()


def test_kill9_mid_fill_keeps_committed_images_and_drops_the_partial(
    glance: FaultyGlance, daemon: EdgecacheProcess
) -> None:
    image_a = glance.add_image(os.urandom(4 * MiB))["id"]
    # 32 pieces of 64 KiB, 0.3 s apart: the fill of B takes about 10 s.
    image_b = glance.add_image(
        os.urandom(2 * MiB), fault=Fault(trickle_chunk=64 * 1024, trickle_delay=0.3)
    )["id"]
    size_b = 2 * MiB

    fetch_verified(daemon, glance, image_a)
    wait_committed(daemon, image_a)
    assert glance.count("GET", file_path(image_a)) == 1

    client = RawDownload(daemon.port, image_b)
    thread = threading.Thread(target=client.run, name="download-b", daemon=True)
    thread.start()
    try:
        assert client.first_bytes.wait(10), f"no bytes of B arrived ({client.ended_by})"
        wait_until(
            lambda: any(p.stat().st_size > 0 for p in partials(daemon, image_b)),
            "a non-empty partial of B in incomplete/",
        )
        assert not client.done.is_set(), "B's fill finished before the kill; slow it down"

        daemon.kill9()
    finally:
        thread.join(10)
    assert not thread.is_alive()

    # The caller of B saw a 200 whose body ended short: never a clean end.
    assert client.status == 200
    assert client.content_length == size_b
    assert 0 < client.received < size_b
    assert client.ended_by in ("eof", "reset"), client.ended_by

    # kill -9 leaves the partial behind; it is in incomplete/, never in data/.
    assert partials(daemon, image_b)
    assert not (daemon.data_dir / image_b).exists()
    a_fetches = glance.count("GET", file_path(image_a))
    b_fetches = glance.count("GET", file_path(image_b))
    assert b_fetches == 1

    daemon.restart()

    # The partial is swept at start; B was never committed.
    assert partials(daemon) == []
    assert image_b not in os.listdir(daemon.data_dir)

    # A is served from the cache: no upstream /file GET, bytes verified.
    fetch_verified(daemon, glance, image_a)
    assert glance.count("GET", file_path(image_a)) == a_fetches
    assert metric_value(daemon.url, "edgecache_image_requests_total", result="hit") == 1

    # B is fetched again (upstream healthy now), verified, and committed this time.
    glance.set_fault(image_b, None)
    fetch_verified(daemon, glance, image_b)
    assert glance.count("GET", file_path(image_b)) == b_fetches + 1
    wait_committed(daemon, image_b)
    assert partials(daemon) == []


def test_restart_keeps_the_index_and_reconciles_the_data_directory(
    glance: FaultyGlance, daemon: EdgecacheProcess
) -> None:
    image_a = glance.add_image(os.urandom(3 * MiB))["id"]
    image_c = glance.add_image(os.urandom(2 * MiB + 12345))["id"]
    for image_id in (image_a, image_c):
        fetch_verified(daemon, glance, image_id)
        wait_committed(daemon, image_id)

    assert daemon.stop() == 0, daemon.log_text()

    # While it is down: an orphan file without an index row, and a committed file
    # that lost its tail (size no longer what the index says).
    orphan = daemon.data_dir / str(uuid.uuid4())
    orphan.write_bytes(os.urandom(100_000))
    junk = daemon.data_dir / "not-an-image"
    junk.write_bytes(b"junk")
    truncated = daemon.data_dir / image_c
    with truncated.open("r+b") as handle:
        handle.truncate(MiB)

    daemon.start()

    assert not orphan.exists(), "an orphan data file survived the start"
    assert not junk.exists(), "a stray file in data/ survived the start"
    assert not truncated.exists(), "a data file of the wrong size survived the start"
    assert sorted(os.listdir(daemon.data_dir)) == [image_a]

    fetches = {i: glance.count("GET", file_path(i)) for i in (image_a, image_c)}
    assert fetches == {image_a: 1, image_c: 1}

    # A: still a hit after the restart (no upstream /file GET), bytes verified.
    fetch_verified(daemon, glance, image_a)
    assert glance.count("GET", file_path(image_a)) == 1
    assert metric_value(daemon.url, "edgecache_image_requests_total", result="hit") == 1

    # C: dropped at start, so a miss that refetches and commits the whole image again.
    fetch_verified(daemon, glance, image_c)
    assert glance.count("GET", file_path(image_c)) == 2
    wait_committed(daemon, image_c, occurrences=2)
    assert (daemon.data_dir / image_c).stat().st_size == glance.metadata(image_c)["size"]

    # And a second clean restart keeps both as hits.
    daemon.restart()
    for image_id in (image_a, image_c):
        fetch_verified(daemon, glance, image_id)
    assert glance.count("GET", file_path(image_a)) == 1
    assert glance.count("GET", file_path(image_c)) == 2
    assert metric_value(daemon.url, "edgecache_image_requests_total", result="hit") == 2


def test_stalled_fill_is_abandoned_after_stall_time(
    glance: FaultyGlance, tmp_path: Path
) -> None:
    size = 2 * MiB
    image_id = glance.add_image(os.urandom(size), fault=Fault(stall_after=256 * 1024))["id"]
    with EdgecacheProcess(
        tmp_path / "stall", glance_endpoints=[glance.url], stall_time=1
    ) as daemon:
        client = RawDownload(daemon.port, image_id)
        client.run()  # returns when the daemon gives up on the fill and cuts the response
        assert client.status == 200
        assert client.content_length == size
        assert 0 < client.received < size
        assert client.ended_by in ("eof", "reset"), client.ended_by
        wait_until(lambda: partials(daemon) == [], "the stalled partial to be removed")
        assert "made no progress" in daemon.log_text()
        assert not (daemon.data_dir / image_id).exists()

        glance.set_fault(image_id, None)
        fetch_verified(daemon, glance, image_id)
        assert glance.count("GET", file_path(image_id)) == 2
        wait_committed(daemon, image_id)


def test_sigterm_drains_a_fill_and_keeps_the_image(
    glance: FaultyGlance, daemon: EdgecacheProcess
) -> None:
    """A fill that completes while the daemon drains on SIGTERM is committed, not thrown away."""
    size = 2 * MiB
    image_id = glance.add_image(
        os.urandom(size), fault=Fault(trickle_chunk=128 * 1024, trickle_delay=0.1)
    )["id"]
    client = RawDownload(daemon.port, image_id)
    thread = threading.Thread(target=client.run, name="download", daemon=True)
    thread.start()
    try:
        assert client.first_bytes.wait(10), client.ended_by
        assert daemon.stop() == 0, daemon.log_text()[-3000:]
    finally:
        thread.join(15)

    # Graceful drain: the caller in flight got the whole image.
    assert client.status == 200
    assert client.received == size, (client.received, client.ended_by)
    assert partials(daemon) == []
    assert glance.count("GET", file_path(image_id)) == 1

    glance.set_fault(image_id, None)
    daemon.start()
    fetch_verified(daemon, glance, image_id)
    assert glance.count("GET", file_path(image_id)) == 1, (
        "the image fetched and verified during the drain was discarded and fetched again"
    )
