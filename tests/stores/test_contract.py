"""The store contract suite (tests/contract/test_store_contract.py) against a real Swift.

Swift needs a real single-node cluster (the ``local_swift`` session fixture), so
its run of the contract belongs to this slow tier; the in-process backends run
the same tests in tests/contract.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest

from lab.swift import LocalSwift
from tests.contract.stores import StoreUnderTest
from tests.contract.test_store_contract import (
    test_a_full_read_yields_every_byte,
    test_a_missing_object_is_not_found,
    test_a_ranged_read_starts_at_the_offset,
    test_an_object_that_exists_opens_with_its_length,
)

__all__ = [
    "test_a_full_read_yields_every_byte",
    "test_a_missing_object_is_not_found",
    "test_a_ranged_read_starts_at_the_offset",
    "test_an_object_that_exists_opens_with_its_length",
]


@pytest.fixture
async def store(local_swift: LocalSwift) -> AsyncIterator[StoreUnderTest]:
    """``swift+http://`` objects in the session's Swift (tempauth from the URL)."""
    from edgecache.upstream.stores.allow import StoreAllowlist
    from edgecache.upstream.stores.swift import SwiftStore

    prefix = uuid.uuid4().hex
    async with aiohttp.ClientSession() as session:
        def put(name: str, data: bytes) -> str:
            local_swift.put_object("images", f"{prefix}-{name}", data)
            return local_swift.location("images", f"{prefix}-{name}")

        yield StoreUnderTest(
            SwiftStore(session, allow=StoreAllowlist([local_swift.url + "/"])),
            put,
            local_swift.location("images", f"{prefix}-missing"),
        )
