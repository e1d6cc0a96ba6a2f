"""Start-up objects are left out of later garbage collections; garbage made while serving is not."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from edgecache.daemon.app import freeze_startup_objects


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


@pytest.fixture
def frozen() -> Iterator[None]:
    freeze_startup_objects()
    try:
        yield
    finally:
        gc.unfreeze()


def test_what_exists_at_start_up_is_out_of_the_collections_walk(frozen: None) -> None:
    assert gc.get_freeze_count() > 1000


def test_cycles_created_after_start_up_are_still_collected(frozen: None) -> None:
    node = _Node()
    gone = weakref.ref(node)
    del node

    gc.collect()

    assert gone() is None
