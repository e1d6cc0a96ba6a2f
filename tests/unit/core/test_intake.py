"""A body read off a real socket in the intake thread: what lands on disk, and how it ends.

The sender is the other end of a socket pair, written by the test; the disk is
a real file; the hash thread is a real one-thread pool. So breaks, overruns,
timeouts and a stop are the kernel's own.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edgecache.core.intake import BUFFER_SIZE, Intake, IntakeStopped
from edgecache.errors import ShortBody, UpstreamError
from edgecache.model import RawStream

MiB = 1 << 20
BODY = os.urandom(3 * BUFFER_SIZE + 12345)


class Rig:
    """One intake into ``tmp_path/partial``: its sender socket, hash and landing records."""

    def __init__(self, tmp_path: Path) -> None:
        self.sender, receiver = socket.socketpair()
        receiver.setblocking(False)
        self.receiver = receiver
        self.fd = os.open(tmp_path / "partial", os.O_RDWR | os.O_CREAT, 0o600)
        self.hashing = ThreadPoolExecutor(1)
        self.hasher = hashlib.sha512()
        self.hashed_ends: list[int] = []
        self.landed: list[int] = []
        self.breaks = 0
        self.fail_write_at: int | None = None

    def intake(self, *, head: bytes = b"", remaining: int | None, offset: int = 0,
               skip: int = 0, limit: int = len(BODY),
               read_timeout: float | None = 10.0) -> Intake:
        raw = RawStream(self.receiver, head, remaining, read_timeout, self._on_break)
        return Intake(raw, offset=offset, skip=skip, limit=limit, write=self._write,
                      hash_chunk=self._hash, hashing=self.hashing, on_landed=self.landed.append)

    def send_soon(self, data: bytes, *, then_close: bool = True) -> threading.Thread:
        def send() -> None:
            try:
                self.sender.sendall(data)
                if then_close:
                    self.sender.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the intake stopped reading and closed its end: that is the test


        thread = threading.Thread(target=send, daemon=True)
        thread.start()
        return thread

    def file(self) -> bytes:
        return os.pread(self.fd, 64 * MiB, 0)

    def _on_break(self) -> None:
        self.breaks += 1

    def _write(self, data: memoryview, offset: int) -> None:
        if self.fail_write_at is not None and offset + len(data) > self.fail_write_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        os.pwrite(self.fd, data, offset)

    def _hash(self, data: memoryview, end: int) -> None:
        self.hasher.update(data)
        self.hashed_ends.append(end)

    def close(self) -> None:
        self.hashing.shutdown()
        self.sender.close()
        self.receiver.close()
        os.close(self.fd)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path)
    yield made
    made.close()


def test_head_then_socket_bytes_land_whole_and_hashed_in_order(rig: Rig) -> None:
    head = BODY[:1000]
    intake = rig.intake(head=head, remaining=len(BODY) - len(head))
    rig.send_soon(BODY[len(head):], then_close=False)  # a keep-alive peer never closes

    assert intake.run() == len(BODY)

    assert rig.file() == BODY
    assert rig.hasher.hexdigest() == hashlib.sha512(BODY).hexdigest()
    assert rig.hashed_ends == sorted(rig.hashed_ends) and rig.hashed_ends[-1] == len(BODY)
    assert rig.landed == sorted(rig.landed) and rig.landed[-1] == len(BODY)
    assert rig.breaks == 0
    assert rig.receiver.fileno() == -1  # the intake closed its socket


def test_a_200_answer_to_a_resume_drops_what_the_fill_already_has(rig: Rig) -> None:
    have = BUFFER_SIZE + 7
    os.pwrite(rig.fd, BODY[:have], 0)
    intake = rig.intake(remaining=len(BODY), offset=have, skip=have)
    rig.send_soon(BODY)

    assert intake.run() == len(BODY)

    assert rig.file() == BODY
    assert rig.hasher.hexdigest() == hashlib.sha512(BODY[have:]).hexdigest()


def test_a_connection_closed_early_is_a_broken_body(rig: Rig) -> None:
    intake = rig.intake(remaining=len(BODY))
    rig.send_soon(BODY[:-10])

    with pytest.raises(UpstreamError) as raised:
        intake.run()

    assert raised.value.reason == "body"
    assert rig.breaks == 1
    assert intake.offset == len(BODY) - 10
    assert rig.landed[-1] == len(BODY) - 10
    assert rig.file() == BODY[:-10]


def test_a_close_delimited_body_ends_at_eof_and_may_not_overrun(rig: Rig) -> None:
    intake = rig.intake(remaining=None)
    rig.send_soon(BODY)
    assert intake.run() == len(BODY)
    assert rig.file() == BODY


def test_bytes_past_the_image_size_are_refused(rig: Rig) -> None:
    intake = rig.intake(remaining=None, limit=len(BODY) - 1)
    rig.send_soon(BODY)

    with pytest.raises(ShortBody, match="more than"):
        intake.run()

    assert not rig.landed or rig.landed[-1] <= len(BODY) - 1


def test_a_silent_sender_times_out_as_a_broken_body(rig: Rig) -> None:
    intake = rig.intake(remaining=len(BODY), read_timeout=0.2)
    rig.send_soon(BODY[:100], then_close=False)

    with pytest.raises(UpstreamError, match=r"no bytes for 0\.2 s") as raised:
        intake.run()

    assert raised.value.reason == "body"
    assert rig.breaks == 1
    assert rig.file() == BODY[:100]


def test_stop_ends_a_read_that_waits(rig: Rig) -> None:
    intake = rig.intake(remaining=len(BODY), read_timeout=None)
    rig.send_soon(BODY[:100], then_close=False)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            intake.run()
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    while not rig.landed:
        threading.Event().wait(0.01)
    intake.stop()
    thread.join(5)

    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], IntakeStopped)
    assert rig.breaks == 0  # a stop is ours, not the sender's


def test_a_failed_write_stops_the_intake_and_nothing_past_it_lands(rig: Rig) -> None:
    rig.fail_write_at = 2 * BUFFER_SIZE + 1
    intake = rig.intake(remaining=len(BODY))
    rig.send_soon(BODY, then_close=False)

    with pytest.raises(OSError, match="No space"):
        intake.run()

    assert rig.landed and rig.landed[-1] <= rig.fail_write_at
    assert rig.file() == BODY[: rig.landed[-1]]
    # Every hash handed out has run: the fill's hash state is settled.
    assert rig.hashed_ends[-1] >= rig.landed[-1]
