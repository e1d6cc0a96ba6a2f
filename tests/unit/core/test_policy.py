"""Eviction and stall decisions, with sizes and clocks passed in."""

from edgecache.core import policy
from edgecache.core.index import Index
from edgecache.model import Entry


def _index(*sizes: int) -> Index:
    index = Index()
    for number, size in enumerate(sizes):
        index.add(Entry(image_id=f"img-{number}", size=size, last_access=float(number)))
    return index


def test_least_recently_used_go_first() -> None:
    index = _index(40, 30, 20)
    victims = policy.victims_for(
        25, lru=index.lru_order(), used=index.total_bytes, reserved=0, max_size=100
    )
    assert [v.image_id for v in victims or []] == ["img-0"]


def test_a_touched_entry_becomes_most_recent() -> None:
    index = _index(40, 30, 20)
    index.touch("img-0", now=10.0)
    victims = policy.victims_for(
        25, lru=index.lru_order(), used=index.total_bytes, reserved=0, max_size=100
    )
    assert [v.image_id for v in victims or []] == ["img-1"]


def test_reserved_space_counts_and_pinned_entries_stay() -> None:
    index = _index(40, 30)
    entry = index.get("img-0")
    assert entry is not None
    entry.pinned = True
    victims = policy.victims_for(
        30, lru=index.lru_order(), used=index.total_bytes, reserved=20, max_size=100
    )
    assert [v.image_id for v in victims or []] == ["img-1"]


def test_nothing_fits_when_the_image_is_larger_than_the_cache() -> None:
    assert policy.victims_for(101, lru=[], used=0, reserved=0, max_size=100) is None


def test_nothing_fits_when_only_pinned_entries_remain() -> None:
    index = _index(90)
    entry = index.get("img-0")
    assert entry is not None
    entry.pinned = True
    assert policy.victims_for(
        20, lru=index.lru_order(), used=index.total_bytes, reserved=0, max_size=100
    ) is None


def test_the_disk_bounds_fills_when_max_size_is_larger_than_it() -> None:
    """max_size 1000 on a disk with 50 bytes of room: an image of 60 evicts the least
    recently used entries until the disk can take it, one of 200 does not fit at all."""
    index = _index(40, 30, 20)
    lru, used = list(index.lru_order()), index.total_bytes
    assert policy.victims_for(40, lru=lru, used=used, reserved=0, max_size=1000,
                              disk_room=50) == []
    victims = policy.victims_for(60, lru=lru, used=used, reserved=0, max_size=1000,
                                 disk_room=50)
    assert [v.image_id for v in victims or []] == ["img-0"]
    assert policy.victims_for(200, lru=lru, used=used, reserved=0, max_size=1000,
                              disk_room=50) is None
    # others took the room running fills counted on: evicting makes it up
    victims = policy.victims_for(10, lru=lru, used=used, reserved=0, max_size=1000,
                                 disk_room=-5)
    assert [v.image_id for v in victims or []] == ["img-0"]


def test_over_limit_after_the_limit_shrank() -> None:
    index = _index(40, 30, 20)
    victims = policy.over_limit(lru=index.lru_order(), used=index.total_bytes, reserved=0,
                                max_size=40)
    assert [v.image_id for v in victims] == ["img-0", "img-1"]


def test_stall_is_measured_from_the_last_progress() -> None:
    assert not policy.is_stalled(last_progress=100.0, now=109.0, stall_time=10.0)
    assert policy.is_stalled(last_progress=100.0, now=110.0, stall_time=10.0)


def test_index_keeps_its_byte_total() -> None:
    index = _index(40, 30, 20)
    assert index.total_bytes == 90
    index.remove("img-1")
    assert index.total_bytes == 60 and len(index) == 2
    index.add(Entry(image_id="img-0", size=5))
    assert index.total_bytes == 25
