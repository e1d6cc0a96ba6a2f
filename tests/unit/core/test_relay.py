"""The relay after a fill's disk failed: what a reader gets from upstream, and when.

The source is a small in-memory :class:`~edgecache.model.ImageSource` that answers
like Glance (206 from the offset asked, or a 200 that ignores it, a body that may
break off), so every rule is checked byte for byte.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from edgecache.core.relay import relay
from edgecache.errors import ChecksumMismatch, UpstreamError
from edgecache.model import ImageMeta
from tests.unit.core.test_fill import DATA, image, pieces


class Body:
    def __init__(self, data: bytes, start: int, *, break_after: int | None) -> None:
        self._data, self.start = data, start
        self.content_length: int | None = len(data)
        self._break_after = break_after

    async def chunks(self) -> AsyncIterator[bytes]:
        sent = 0
        for piece in pieces(self._data, 700):
            if self._break_after is not None and sent >= self._break_after:
                raise UpstreamError("connection lost", reason="body")
            sent += len(piece)
            yield piece

    def close(self) -> None:
        pass


class Source:
    """Serves ``data``; ``ignore_range`` answers 200 from 0; the first body breaks off
    after ``break_after`` bytes."""

    def __init__(self, data: bytes, *, ignore_range: bool = False,
                 break_after: int | None = None) -> None:
        self.data = data
        self.ignore_range = ignore_range
        self.break_after = break_after
        self.offsets: list[int] = []
        self.headers: list[Mapping[str, str]] = []

    async def open_image(self, image_id: str, headers: Mapping[str, str], *, offset: int = 0,
                         meta: ImageMeta | None = None) -> Body:
        self.offsets.append(offset)
        self.headers.append(headers)
        start = 0 if self.ignore_range else offset
        breaks, self.break_after = self.break_after, None
        return Body(self.data[start:], start, break_after=breaks)


async def _no_sleep(_: float) -> None:
    await asyncio.sleep(0)


async def _collect(source: Source, *, hash_from: int, hasher: Any, send_from: int,
                   send_to: int, meta: ImageMeta | None = None) -> list[bytes]:
    got = []
    async for piece in relay(source, meta or image(), {"X-Auth-Token": "reader's"},
                             size=len(DATA), hash_from=hash_from, hasher=hasher,
                             send_from=send_from, send_to=send_to, max_resumes=3,
                             sleep=_no_sleep):
        got.append(piece)
    return got


def _state(upto: int) -> Any:
    return hashlib.sha512(DATA[:upto])


async def test_the_rest_comes_from_the_disk_stop_with_the_readers_credentials() -> None:
    source = Source(DATA)
    got = await _collect(source, hash_from=3000, hasher=_state(3000), send_from=3000,
                         send_to=len(DATA))
    assert b"".join(got) == DATA[3000:]
    assert got[-1] == DATA[-1:]  # the last byte on its own, once verified
    assert source.offsets == [3000]
    assert source.headers == [{"X-Auth-Token": "reader's"}]


async def test_a_200_to_the_ranged_read_drops_the_bytes_already_had() -> None:
    source = Source(DATA, ignore_range=True)
    got = await _collect(source, hash_from=3000, hasher=_state(3000), send_from=3000,
                         send_to=len(DATA))
    assert b"".join(got) == DATA[3000:]


async def test_a_body_that_breaks_off_is_resumed() -> None:
    source = Source(DATA, break_after=2100)
    got = await _collect(source, hash_from=1000, hasher=_state(1000), send_from=1000,
                         send_to=len(DATA))
    assert b"".join(got) == DATA[1000:]
    assert source.offsets[0] == 1000 and len(source.offsets) == 2 and source.offsets[1] > 1000


async def test_a_range_ends_only_once_the_whole_image_is_verified() -> None:
    """A range [100, 200) whose reader stopped at 150 while the disk held 5000 bytes: it
    reads from 150, hashes on from 5000 to the end, and gets byte 199 last."""
    source = Source(DATA)
    got = await _collect(source, hash_from=5000, hasher=_state(5000), send_from=150,
                         send_to=200)
    assert b"".join(got) == DATA[150:200]
    assert got[-1] == DATA[199:200]
    assert source.offsets == [150]


async def test_wrong_bytes_withhold_the_last_byte_and_raise() -> None:
    bad = bytearray(DATA)
    bad[8000] ^= 0xFF
    sent = bytearray()
    with pytest.raises(ChecksumMismatch):
        async for piece in relay(Source(bytes(bad)), image(), {}, size=len(DATA),
                                 hash_from=3000, hasher=_state(3000), send_from=3000,
                                 send_to=len(DATA), max_resumes=3, sleep=_no_sleep):
            sent += piece
    assert len(sent) == len(DATA) - 3000 - 1


async def test_a_lost_hash_state_hashes_from_the_start() -> None:
    """relay_start's fallback (0, fresh hash): the bytes before the reader's offset are read
    and hashed, not sent."""
    source = Source(DATA)
    got = await _collect(source, hash_from=0, hasher=hashlib.sha512(), send_from=4000,
                         send_to=len(DATA))
    assert b"".join(got) == DATA[4000:]
    assert source.offsets == [0]


async def test_without_a_hash_a_range_reads_no_further_than_it_needs() -> None:
    source = Source(DATA)
    got = await _collect(source, hash_from=3000, hasher=None, send_from=100, send_to=300,
                         meta=image(os_hash_algo=None, os_hash_value=None, checksum=None))
    assert b"".join(got) == DATA[100:300]
