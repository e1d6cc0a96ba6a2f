"""Glance's verdict reaches the caller, and the target reaches Glance verbatim.

A Glance that refuses an upload answers before it reads the body (a 403 for an
image the caller may not write, a 409 for an active image, a 413) and then
drops the connection, with an RST when bytes are left unread. Real Glance
does this by chance of timing (tests/integration/test_glance_load.py loads
it); :class:`EarlyAnswerServer` does it every time, on raw sockets:

* ``reset``: read the request head, answer 403, wait until the client has
  every byte of it, then reset the connection without reading the body;
* ``drop_next``: answer 403 without reading the body, discard the body, and
  reset the connection when the next request arrives on it, the way uWSGI
  closes a connection whose body the application left unread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest
from pytest_aiohttp import AiohttpClient
from yarl import URL

from lab.units import KiB, MiB
from tests.functional import Edge, start_edgecache
from tests.support.faultyglance import FaultyGlance

REFUSAL = json.dumps({"message": "You are not authorized to complete upload action.",
                      "code": "403 Forbidden", "title": "Forbidden"}).encode()
ANSWER = (
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(REFUSAL)).encode() + b"\r\n"
    b"X-Openstack-Request-Id: req-refused\r\n\r\n" + REFUSAL
)

Mode = Literal["reset", "drop_next"]


def _unacked(sock: socket.socket) -> int:
    """Bytes the peer has not acknowledged yet (Linux SIOCOUTQ)."""
    import fcntl
    import termios

    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int(struct.unpack("i", raw)[0])


class EarlyAnswerServer:
    """A Glance stand-in that refuses every request before reading its body."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.heads: list[bytes] = []
        self.connections = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> EarlyAnswerServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        sock: socket.socket = writer.get_extra_info("socket")
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                if len(self.heads) > 1 and self.mode == "drop_next" and self._served_here:
                    break  # a second request on a connection with an unread body: drop it
                writer.write(ANSWER)
                await writer.drain()
                self._served_here = True
                if self.mode == "reset":
                    break
                await reader.readexactly(_content_length(head))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._served_here = False
            with contextlib.suppress(OSError):
                for _ in range(1000):
                    if _unacked(sock) == 0:
                        break
                    await asyncio.sleep(0.001)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

    _served_here = False


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@pytest.fixture
async def early(request: pytest.FixtureRequest) -> AsyncIterator[EarlyAnswerServer]:
    async with EarlyAnswerServer(request.param) as server:
        yield server


async def _edge(aiohttp_client: AiohttpClient, tmp_path: Path, url: str) -> Edge:
    return await start_edgecache(aiohttp_client, tmp_path / "cache", (url,))


async def _put(edge: Edge, body: bytes) -> tuple[int, bytes, str | None]:
    async with edge.client.put(
        "/v2/images/8e5d9ae1-3a43-4c2a-9f1c-3d1f0b7c8a61/file",
        data=body,
        headers={"Content-Type": "application/octet-stream"},
    ) as resp:
        return resp.status, await resp.read(), resp.headers.get("x-openstack-request-id")


@pytest.mark.parametrize("early", ["drop_next"], indirect=True)
async def test_refused_uploads_in_a_row_each_get_glances_answer(
    aiohttp_client: AiohttpClient, tmp_path: Path, early: EarlyAnswerServer
) -> None:
    """An upload never goes out on a connection that carried an unread body."""
    edge = await _edge(aiohttp_client, tmp_path, early.url)
    answers = [await _put(edge, os.urandom(2 * KiB)) for _ in range(5)]

    assert answers == [(403, REFUSAL, "req-refused")] * 5
    assert early.connections == 5
    async with edge.client.get("/v2/images?limit=1") as resp:  # and nothing after fails
        assert (resp.status, await resp.read()) == (403, REFUSAL)


@pytest.mark.parametrize("early", ["reset"], indirect=True)
async def test_refusal_then_reset_is_relayed(
    aiohttp_client: AiohttpClient, tmp_path: Path, early: EarlyAnswerServer
) -> None:
    """The answer came before the reset: the caller gets it, never a 503."""
    edge = await _edge(aiohttp_client, tmp_path, early.url)
    for size in (2 * KiB, 4 * MiB):
        body = os.urandom(size)
        answers = [await _put(edge, body) for _ in range(10)]
        assert answers == [(403, REFUSAL, "req-refused")] * 10, size


# -- the request target, byte for byte -------------------------------------------------

TARGETS = [
    "/v2/images/a%3Fb/members?member=%3F&x=%2B%20y",
    "/v2/images?name=%3Fq%3D1&tag=%7e",
    "/image/v2/images?name=%3F",
]


@pytest.mark.parametrize("target", TARGETS)
async def test_path_and_query_reach_glance_as_sent(
    aiohttp_client: AiohttpClient, tmp_path: Path, faulty_glance: FaultyGlance, target: str
) -> None:
    edge = await _edge(aiohttp_client, tmp_path, faulty_glance.url)
    for method in ("GET", "PATCH"):
        async with edge.client.request(
            method, URL(target, encoded=True), data=b"{}" if method == "PATCH" else None
        ) as resp:
            assert resp.status == 200
            echo: dict[str, Any] = json.loads(await resp.read())
        assert echo["raw_path"] == target.removeprefix("/image"), method
