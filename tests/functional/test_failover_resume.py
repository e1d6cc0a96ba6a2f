"""An endpoint that dies mid-body: the fill resumes on the next endpoint.

See docs/behaviour.md#upstream-faults.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from lab.units import MiB
from tests.functional import file_path, sha512, start_edgecache
from tests.support.faultyglance import Fault, FaultyGlance


async def test_a_body_cut_by_a_dying_endpoint_resumes_on_the_next(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    data = os.urandom(4 * MiB)
    async with FaultyGlance() as first, FaultyGlance() as second:
        meta = first.add_image(data, fault=Fault(trickle_chunk=256 * 1024, trickle_delay=0.5))
        image_id = meta["id"]
        second.add_image(data, image_id=image_id)
        edge = await start_edgecache(aiohttp_client, tmp_path / "cache", (first.url, second.url))

        response = await edge.client.get(file_path(image_id))
        assert response.status == 200
        received = await response.content.readexactly(256 * 1024)
        await first.close()  # the first Glance dies with the body half sent
        received += await response.content.read()

        assert len(received) == len(data)
        assert sha512(received) == meta["os_hash_value"]
        resumed = [r for r in second.requests if r.path == file_path(image_id)]
        assert len(resumed) == 1
        assert resumed[0].range is not None and resumed[0].range.startswith("bytes=")
        assert resumed[0].range != "bytes=0-"
        await edge.settled()
        assert edge.data_files() == {image_id: len(data)}


class HungEndpoint:
    """A TCP listener on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.accepted = 0

    async def __aenter__(self) -> str:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            self._writers.append(writer)  # kept open: the request is read, never answered

        self._server = await asyncio.start_server(hold, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc_info: object) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.mark.parametrize("read_timeout", [1.0])
async def test_a_hung_endpoint_is_given_up_and_the_next_one_serves(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path,
    read_timeout: float,
) -> None:
    """Endpoint 1 accepts and never answers; every download still succeeds, verified,
    within read_timeout and a second, and the hung endpoint is rested afterwards."""
    data = os.urandom(2 * MiB)
    meta = faulty_glance.add_image(data)
    image_id = meta["id"]
    hung = HungEndpoint()
    async with hung as hung_url:
        edge = await start_edgecache(aiohttp_client, tmp_path / "cache",
                                     (hung_url, faulty_glance.url), read_timeout=read_timeout)
        started = time.monotonic()
        got = await edge.fetch(file_path(image_id), within=read_timeout + 5)
        elapsed = time.monotonic() - started

        assert (got.status, got.error) == (200, None)
        assert sha512(got.body) == meta["os_hash_value"]
        assert elapsed < read_timeout + 1.0, elapsed
        assert hung.accepted >= 1
        accepted = hung.accepted
        other = os.urandom(MiB)
        other_id = faulty_glance.add_image(other)["id"]
        started = time.monotonic()
        again = await edge.fetch(file_path(other_id))
        assert (again.status, again.body) == (200, other)
        assert time.monotonic() - started < read_timeout, "the rested endpoint went last"
        assert hung.accepted == accepted, "a rested endpoint is not asked again at once"
        await edge.settled()
