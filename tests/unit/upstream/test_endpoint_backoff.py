"""GlanceUpstream's endpoint rests: a failing endpoint is tried last, then again after its
backoff, on a fake clock. Two tiny HTTP servers on 127.0.0.1 (and a closed port) stand in
for Glance endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from edgecache.errors import UpstreamError
from edgecache.upstream.glance import GlanceUpstream
from lab.ports import free_port
from tests.support.clock import FakeClock

#: A step exact in binary, so stepping back and forth lands on a deadline exactly.
TICK = 1 / 64
RECORD = {"id": "img-1", "status": "active", "size": 3}


@dataclass
class Endpoint:
    """A Glance endpoint answering 503 while ``unavailable``, and counting requests."""

    unavailable: bool = False
    hits: int = 0
    server: TestServer | None = field(default=None, repr=False)

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.unavailable:
            return web.Response(status=503)
        return web.json_response(RECORD)

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")


async def _serve(endpoint: Endpoint) -> Endpoint:
    app = web.Application()
    app.router.add_get("/v2/images/{image_id}", endpoint.handle)
    endpoint.server = TestServer(app, host="127.0.0.1")
    await endpoint.server.start_server()
    return endpoint


@pytest.fixture
async def endpoints() -> AsyncIterator[tuple[Endpoint, Endpoint]]:
    first, second = await _serve(Endpoint()), await _serve(Endpoint())
    try:
        yield first, second
    finally:
        for endpoint in (first, second):
            assert endpoint.server is not None
            await endpoint.server.close()


def _closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


async def test_an_unavailable_endpoint_rests_for_its_backoff(
    endpoints: tuple[Endpoint, Endpoint],
) -> None:
    first, second = endpoints
    first.unavailable = True
    clock = FakeClock()
    async with GlanceUpstream((first.url, second.url), clock=clock) as upstream:
        assert (await upstream.image_metadata("img-1", {})).id == "img-1"
        assert (first.hits, second.hits) == (1, 1), "a 503 moves on to the next endpoint"

        for rest in (2.0, 4.0):  # the first and second failure in a row
            await clock.advance(rest - TICK)
            await upstream.image_metadata("img-1", {})
            assert upstream.candidates() == [second.url, first.url]
            hits = first.hits
            await clock.advance(TICK)
            assert upstream.candidates() == [first.url, second.url], "rested long enough"
            await upstream.image_metadata("img-1", {})
            assert first.hits == hits + 1, f"tried first again after {rest} s"

        first.unavailable = False
        await clock.advance(8.0)
        await upstream.image_metadata("img-1", {})
        assert first.hits == 4
        hits = second.hits
        await upstream.image_metadata("img-1", {})
        assert (first.hits, second.hits) == (5, hits), "an answer ends its backoff"


async def test_a_refused_connection_rests_the_endpoint(
    endpoints: tuple[Endpoint, Endpoint],
) -> None:
    _, live = endpoints
    closed = _closed_port_url()
    clock = FakeClock()
    async with GlanceUpstream((closed, live.url), clock=clock) as upstream:
        await upstream.image_metadata("img-1", {})
        assert upstream.candidates() == [live.url, closed]
        await clock.advance(2.0 - TICK)
        assert upstream.candidates() == [live.url, closed]
        await clock.advance(TICK)
        assert upstream.candidates() == [closed, live.url]
        await upstream.image_metadata("img-1", {})  # refused again: rests 4 s now
        await clock.advance(4.0 - TICK)
        assert upstream.candidates() == [live.url, closed]
        await clock.advance(TICK)
        assert upstream.candidates() == [closed, live.url]


async def test_the_last_endpoints_answer_is_returned_even_while_resting(
    endpoints: tuple[Endpoint, Endpoint],
) -> None:
    first, second = endpoints
    first.unavailable = second.unavailable = True
    async with GlanceUpstream((first.url, second.url), clock=FakeClock()) as upstream:
        response = await upstream.request("GET", "/v2/images/img-1", headers={})
        async with response:
            assert response.status == 503
        assert upstream.candidates() == [second.url, first.url]


@pytest.mark.parametrize("spelling", ["127.0.0.1", "LOCALHOST"])
async def test_a_body_that_stalls_rests_the_endpoint_that_sent_it(
    endpoints: tuple[Endpoint, Endpoint], spelling: str
) -> None:
    """A body silent for read_timeout rests its sender, whichever way the operator wrote
    that endpoint (yarl lower-cases the host of the response's URL)."""
    _, live = endpoints
    sent = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "8"})
        await response.prepare(request)
        await response.write(b"half")
        sent.set()
        await asyncio.Event().wait()  # silent, open, until the client leaves
        return response

    app = web.Application()
    app.router.add_get("/v2/images/{image_id}/file", stall)
    async with TestServer(app, host="127.0.0.1") as server:
        stalling = f"http://{spelling}:{server.port}"
        async with GlanceUpstream((stalling, live.url), read_timeout=0.2,
                                  clock=FakeClock()) as upstream:
            body = await upstream.open_image("img-1", {})
            with pytest.raises(UpstreamError, match="broke off"):
                async for _ in body.chunks():
                    pass
            body.close()
            assert sent.is_set()
            assert upstream.candidates() == [live.url, stalling]
