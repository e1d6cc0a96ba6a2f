"""Taking an image body's socket out of aiohttp: no byte lost, none read twice.

A real aiohttp server sends the body; the client lets aiohttp's buffers fill
(so flow control has paused its parser with bytes held back) before the body
is detached. What aiohttp had, then what the socket has, must be the body.
"""

from __future__ import annotations

import asyncio
import os
import select
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from edgecache.model import RawStream
from edgecache.upstream.body import HttpBody

BODY = os.urandom(8 << 20)


def read_rest(raw: RawStream) -> bytes:
    """The socket's bytes up to ``raw.remaining`` (or EOF), as the intake would read them."""
    out = bytearray()
    while raw.remaining is None or len(out) < raw.remaining:
        select.select([raw.sock], [], [], 10)
        try:
            piece = raw.sock.recv(1 << 20)
        except BlockingIOError:
            continue
        if not piece:
            break
        out += piece
    return bytes(out)


@pytest.fixture
async def server(aiohttp_server: AiohttpServer) -> AsyncIterator[str]:
    async def plain(request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="application/octet-stream")

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(BODY[:1000])
        await response.write_eof()
        return response

    async def gzipped(request: web.Request) -> web.Response:
        response = web.Response(body=BODY[:1000])
        response.enable_compression(web.ContentCoding.gzip)
        return response

    app = web.Application()
    app.router.add_get("/plain", plain)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/gzipped", gzipped)
    running = await aiohttp_server(app)
    yield str(running.make_url(""))


@pytest.mark.parametrize("read_first", [0, 100_000])
@pytest.mark.parametrize("wait", [0.0, 0.3])
async def test_what_aiohttp_holds_and_the_socket_sends_are_the_body(
    server: str, read_first: int, wait: float
) -> None:
    async with aiohttp.ClientSession() as session:
        response = await session.get(server + "/plain")
        body = HttpBody(response, read_timeout=7.0)
        # The fill never reads before detaching, but a body read a little first
        # (and one left to fill aiohttp's buffers) must come out the same.
        first = await response.content.readexactly(read_first) if read_first else b""
        await asyncio.sleep(wait)
        raw = body.detach()
        assert raw is not None
        try:
            assert raw.read_timeout == 7.0
            assert raw.remaining == len(BODY) - len(first) - len(raw.head)
            rest = await asyncio.wait_for(asyncio.to_thread(read_rest, raw), 20)
        finally:
            raw.sock.close()
            body.close()
    assert first + raw.head + rest == BODY


async def test_chunked_or_encoded_bodies_stay_with_aiohttp(server: str) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/chunked", "/gzipped"):
            response = await session.get(server + path, headers={"Accept-Encoding": "gzip"})
            body = HttpBody(response)
            assert body.detach() is None, path
            assert await response.read() == BODY[:1000]  # still readable the usual way
            body.close()
