"""An endpoint that dies mid-body: the fill resumes on the next endpoint.

See docs/behaviour.md#upstream-faults.
"""

from __future__ import annotations

import os
from pathlib import Path

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
