"""A sender thread's read-and-write slice (edgecache/api/streaming.py ``_send_now``), on a real
socket pair and a real file: what a full socket, a short file and a closed peer each return."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecache.api import streaming


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)  # as the transport leaves the descriptor the threads dup
    yield ours, theirs
    ours.close()
    theirs.close()


def _file(tmp_path: Path, data: bytes) -> int:
    path = tmp_path / "image"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def _drain(sock: socket.socket, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        got += sock.recv(size - len(got))
    return bytes(got)


def test_a_slice_sends_exactly_the_asked_bytes_from_the_offset(
    tmp_path: Path, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = pair
    data = os.urandom(3 * streaming.COPY_CHUNK + 17)
    fd = _file(tmp_path, data)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    start, count = streaming.COPY_CHUNK - 5, 40_000
    assert streaming._send_now(ours.fileno(), fd, start, count) == (count, False)
    assert _drain(theirs, count) == data[start:start + count]
    os.close(fd)


def test_a_full_socket_returns_what_it_took_and_the_next_slice_goes_on_from_there(
    tmp_path: Path, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = pair
    data = os.urandom(8 * streaming.COPY_CHUNK)
    fd = _file(tmp_path, data)
    sent, ended = streaming._send_now(ours.fileno(), fd, 0, len(data))
    assert 0 < sent < len(data) and not ended  # the peer reads nothing: the socket fills
    received = _drain(theirs, sent)
    more, _ = streaming._send_now(ours.fileno(), fd, sent, len(data) - sent)
    received += _drain(theirs, more)
    assert received == data[: sent + more]  # no byte lost or repeated across the full socket
    os.close(fd)


def test_a_file_shorter_than_asked_says_it_ended_after_its_last_byte(
    tmp_path: Path, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = pair
    data = os.urandom(1000)
    fd = _file(tmp_path, data)
    assert streaming._send_now(ours.fileno(), fd, 200, 5000) == (800, True)
    assert _drain(theirs, 800) == data[200:]
    os.close(fd)


def test_a_peer_that_closed_is_a_client_gone(
    tmp_path: Path, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = pair
    fd = _file(tmp_path, os.urandom(4096))
    theirs.close()
    with pytest.raises(streaming.ClientGone):
        streaming._send_now(ours.fileno(), fd, 0, 4096)
    os.close(fd)
