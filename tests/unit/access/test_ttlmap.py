"""The TTL map under Glance's reused answers: expiry on the clock, and a bound."""

from __future__ import annotations

import pytest

from edgecache.access.ttlmap import TTLMap
from tests.support.clock import FakeClock


async def test_a_value_lives_exactly_its_ttl() -> None:
    clock = FakeClock()
    answers: TTLMap[str, int] = TTLMap(ttl=5.0, max_size=10, clock=clock)
    answers.set("a", 1)
    await clock.advance(5.0)
    assert answers.get("a") == 1, "still fresh at the ttl"
    await clock.advance(0.001)
    assert answers.get("a") is None, "stale just after it"
    assert len(answers) == 0, "a stale value is dropped once seen"


async def test_setting_again_restarts_the_ttl() -> None:
    clock = FakeClock()
    answers: TTLMap[str, int] = TTLMap(ttl=5.0, max_size=10, clock=clock)
    answers.set("a", 1)
    await clock.advance(4.0)
    answers.set("a", 2)
    await clock.advance(4.0)
    assert answers.get("a") == 2


async def test_the_bound_drops_the_oldest_first() -> None:
    clock = FakeClock()
    answers: TTLMap[int, int] = TTLMap(ttl=60.0, max_size=3, clock=clock)
    for key in range(5):
        answers.set(key, key)
        await clock.advance(0.001)
    assert len(answers) == 3
    assert [answers.get(key) for key in range(5)] == [None, None, 2, 3, 4]


async def test_expired_values_make_room_before_live_ones() -> None:
    clock = FakeClock()
    answers: TTLMap[str, int] = TTLMap(ttl=1.0, max_size=100, clock=clock)
    answers.set("old", 1)
    answers.set("older-too", 2)
    await clock.advance(1.5)
    answers.set("new", 3)
    assert len(answers) == 1, "expired values are swept as new ones come in"
    assert answers.get("new") == 3


def test_no_ttl_keeps_nothing_and_a_bound_is_required() -> None:
    answers: TTLMap[str, int] = TTLMap(ttl=0.0, max_size=10, clock=FakeClock())
    answers.set("a", 1)
    assert answers.get("a") is None
    assert len(answers) == 0
    with pytest.raises(ValueError, match="max_size"):
        TTLMap(ttl=1.0, max_size=0)


def test_pop_forgets_a_key() -> None:
    answers: TTLMap[str, int] = TTLMap(ttl=10.0, max_size=10, clock=FakeClock())
    answers.set("a", 1)
    answers.pop("a")
    answers.pop("never-set")
    assert answers.get("a") is None
