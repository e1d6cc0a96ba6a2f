"""One contract, every image source: what a fill may assume of ``open_image``.

A fill does not know which source it reads (:class:`edgecache.model.ImageSource`):
it relies on a body starting at 0 or, when resuming, at the offset asked (206)
or at 0 again (a 200 that ignored the Range, whose head the fill drops); on
Glance's refusals arriving as :class:`UpstreamRefused` with their status; and on
"nobody could answer" being :class:`UpstreamError`, never a refusal. Sources:

* ``glance``: :class:`GlanceUpstream` against the fake Glance
  (tests/support/faultyglance.py), which answers Range requests with 206;
* ``glance-no-ranges``: the same, its ``/file`` ignoring Range (200 from 0);
* ``direct-file``: :class:`DirectStoreSource` reading a ``file://`` location,
  with that GlanceUpstream behind it. Its images exist only in the store, so a
  read that silently fell back to Glance would fail here.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgecache.errors import UpstreamError, UpstreamRefused
from edgecache.metrics import Metrics
from edgecache.model import ImageBody, ImageMeta, ImageSource
from edgecache.upstream.glance import GlanceUpstream
from edgecache.upstream.stores import DirectStoreSource, StoreRegistry
from edgecache.upstream.stores.allow import StoreAllowlist
from edgecache.upstream.stores.file import FileStore
from lab.ports import free_port
from lab.units import MiB
from tests.support.faultyglance import Fault, FaultyGlance

SIZE = 2 * MiB + 3


@dataclass(frozen=True)
class SourceUnderTest:
    """An image source, how to give it an image, and the same source cut off."""

    source: ImageSource
    #: make ``data`` readable through :attr:`source`; the record a fill would hold
    add: Callable[[bytes], ImageMeta]
    #: the record of an image upstream does not have (Glance answers 404)
    missing: Callable[[], ImageMeta]
    #: the same kind of source whose upstream cannot be reached at all
    unreachable: ImageSource
    #: whether this upstream honours a Range (206) or sends the image from 0 (200)
    ranges: bool = True


def closed_endpoint() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connections are refused)."""
    return f"http://127.0.0.1:{free_port()}"


def glance_record(image_id: str, data: bytes, **fields: Any) -> dict[str, Any]:
    return {
        "id": image_id,
        "status": "active",
        "size": len(data),
        "checksum": hashlib.md5(data, usedforsecurity=False).hexdigest(),
        "os_hash_algo": "sha512",
        "os_hash_value": hashlib.sha512(data).hexdigest(),
        **fields,
    }


@pytest.fixture(params=["glance", "glance-no-ranges", "direct-file"])
async def source(
    request: pytest.FixtureRequest, faulty_glance: FaultyGlance, tmp_path: Path
) -> AsyncIterator[SourceUnderTest]:
    fg = faulty_glance
    async with AsyncExitStack() as stack:
        glance = await stack.enter_async_context(GlanceUpstream((fg.url,)))
        down = await stack.enter_async_context(
            GlanceUpstream((closed_endpoint(),), connect_timeout=5)
        )

        def unknown() -> ImageMeta:
            return ImageMeta.from_glance(glance_record(str(uuid.uuid4()), b"never stored"))

        if request.param in ("glance", "glance-no-ranges"):
            fault = Fault(ignore_range=True) if request.param == "glance-no-ranges" else None

            def add_to_glance(data: bytes) -> ImageMeta:
                return ImageMeta.from_glance(fg.add_image(data, fault=fault))

            yield SourceUnderTest(
                glance, add_to_glance, unknown, down, ranges=fault is None
            )
            return

        objects = tmp_path / "objects"
        objects.mkdir()
        stores = StoreRegistry([FileStore(allow=StoreAllowlist([objects.as_uri() + "/"]))])

        def add_to_store(data: bytes) -> ImageMeta:
            image_id = str(uuid.uuid4())
            path = objects / image_id
            path.write_bytes(data)
            return ImageMeta.from_glance(
                glance_record(image_id, data, locations=[{"url": path.as_uri()}])
            )

        def missing_everywhere() -> ImageMeta:
            image_id = str(uuid.uuid4())
            return ImageMeta.from_glance(
                glance_record(image_id, b"gone", locations=[{"url": (objects / image_id).as_uri()}])
            )

        yield SourceUnderTest(
            DirectStoreSource(glance, stores, Metrics()),
            add_to_store,
            missing_everywhere,
            DirectStoreSource(down, stores, Metrics()),
        )


async def read_all(body: ImageBody) -> bytes:
    try:
        return b"".join([chunk async for chunk in body.chunks()])
    finally:
        body.close()


def image_bytes() -> bytes:
    return uuid.uuid4().bytes * (SIZE // 16) + b"end"


async def test_a_download_from_zero_is_the_whole_image(source: SourceUnderTest) -> None:
    data = image_bytes()
    meta = source.add(data)
    body = await source.source.open_image(meta.id, {}, meta=meta)
    assert body.start == 0
    assert body.content_length in (None, len(data))
    assert await read_all(body) == data


@pytest.mark.parametrize("offset", [1, MiB, SIZE - 1])
async def test_a_resume_starts_at_the_offset_or_over_from_zero(
    source: SourceUnderTest, offset: int
) -> None:
    """206 semantics (``start == offset``) or 200-from-0; the bytes match either way."""
    data = image_bytes()
    meta = source.add(data)
    body = await source.source.open_image(meta.id, {}, offset=offset, meta=meta)
    assert body.start == (offset if source.ranges else 0)
    assert body.content_length in (None, len(data) - body.start)
    assert await read_all(body) == data[body.start:]


async def test_an_image_upstream_does_not_have_is_refused_with_404(
    source: SourceUnderTest,
) -> None:
    meta = source.missing()
    for offset in (0, 10):
        with pytest.raises(UpstreamRefused) as refused:
            await source.source.open_image(meta.id, {}, offset=offset, meta=meta)
        assert refused.value.status == 404


async def test_an_unreachable_upstream_is_an_upstream_error(source: SourceUnderTest) -> None:
    meta = source.missing()
    for offset in (0, 10):
        with pytest.raises(UpstreamError) as failed:
            await source.unreachable.open_image(meta.id, {}, offset=offset, meta=meta)
        assert failed.value.reason == "connect"
