"""One contract, every store backend: exists, not found, full read, ranged read.

:class:`~edgecache.upstream.stores.DirectStoreSource` treats every backend alike
(NotFound means "try the next location", a body starts where it says), so each
backend is held to the same four answers. The ``store`` fixture picks the
backend: tests/contract/conftest.py for the in-process ones, and
tests/stores/test_contract.py runs these same tests against a real Swift.
"""

from __future__ import annotations

import os

import pytest

from edgecache.errors import NotFound
from edgecache.model import ImageBody
from lab.units import MiB
from tests.contract.stores import StoreUnderTest


async def read_all(body: ImageBody) -> bytes:
    try:
        return b"".join([chunk async for chunk in body.chunks()])
    finally:
        body.close()


async def test_an_object_that_exists_opens_with_its_length(store: StoreUnderTest) -> None:
    data = os.urandom(1000)
    body = await store.backend.open(store.put("small", data))
    assert (body.start, body.content_length) == (0, len(data))
    assert await read_all(body) == data


async def test_a_missing_object_is_not_found(store: StoreUnderTest) -> None:
    with pytest.raises(NotFound):
        await store.backend.open(store.missing)
    with pytest.raises(NotFound):
        await store.backend.open(store.missing, 10)


async def test_a_full_read_yields_every_byte(store: StoreUnderTest) -> None:
    data = os.urandom(3 * MiB + 5)
    body = await store.backend.open(store.put("large", data), 0)
    assert await read_all(body) == data


@pytest.mark.parametrize("offset", [1, MiB, 3 * MiB + 4])
async def test_a_ranged_read_starts_at_the_offset(store: StoreUnderTest, offset: int) -> None:
    data = os.urandom(3 * MiB + 5)
    body = await store.backend.open(store.put("ranged", data), offset)
    assert (body.start, body.content_length) == (offset, len(data) - offset)
    assert await read_all(body) == data[offset:]
