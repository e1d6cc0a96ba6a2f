"""The one backoff rule that endpoint rests and prefetch retries share."""

from __future__ import annotations

import pytest

from edgecache.backoff import Backoff
from edgecache.ops.prefetch import RETRY_BACKOFF
from edgecache.upstream.glance import ENDPOINT_BACKOFF


def test_delays_double_up_to_the_cap() -> None:
    assert [Backoff().delay(n) for n in range(1, 9)] == [2, 4, 8, 16, 32, 60, 60, 60]
    assert Backoff(base=0.5, factor=3, cap=10).delay(3) == 4.5
    assert Backoff(base=1, factor=1, cap=10).delay(50) == 1, "factor 1: a constant rest"


def test_no_failure_no_rest_and_no_overflow() -> None:
    assert Backoff().delay(0) == 0.0
    assert Backoff().delay(10**6) == 60.0
    assert Backoff(base=1, factor=10, cap=5).delay(10**6) == 5.0


def test_nonsense_is_refused() -> None:
    for bad in ({"base": -1.0}, {"factor": 0.5}, {"cap": -1.0}):
        with pytest.raises(ValueError, match="not a backoff"):
            Backoff(**bad)


def test_endpoint_rests_and_prefetch_retries_keep_their_schedules() -> None:
    """2 ** n seconds capped at a minute, as both were written before sharing the rule."""
    for n in range(1, 12):
        assert ENDPOINT_BACKOFF.delay(n) == min(60.0, 2.0**n)
        assert RETRY_BACKOFF.delay(n) == min(60.0, 2.0**n)
