"""Pure cache decisions: what to evict, how much is pinned, whether a fill has stalled.

No I/O and no clock: callers pass sizes and ``now``, so every rule is a unit test.
"""

from __future__ import annotations

from collections.abc import Iterable

from edgecache.model import Entry


def victims_for(
    incoming: int,
    *,
    lru: Iterable[Entry],
    used: int,
    reserved: int,
    max_size: int,
    busy: frozenset[str] = frozenset(),
    disk_room: int | None = None,
) -> list[Entry] | None:
    """The least recently used entries to evict so ``incoming`` bytes fit.

    ``used`` counts committed bytes, ``reserved`` the space promised to fills in
    progress. ``disk_room`` is what the file system can still take beyond what
    running fills will write (None: unknown); an evicted entry gives its bytes
    back to both bounds, so a ``max_size`` larger than the disk cannot fill it.
    Pinned entries and ``busy`` ones are never chosen. Returns ``None`` when even
    evicting every candidate would not make room.
    """
    if incoming > max_size:
        return None
    excess = used + reserved + incoming - max_size
    if disk_room is not None:
        excess = max(excess, incoming - disk_room)
    chosen: list[Entry] = []
    for entry in lru:
        if excess <= 0:
            break
        if entry.pinned or entry.image_id in busy:
            continue
        chosen.append(entry)
        excess -= entry.size
    return chosen if excess <= 0 else None


def over_limit(*, lru: Iterable[Entry], used: int, reserved: int, max_size: int) -> list[Entry]:
    """Entries to evict when the cache is over ``max_size`` (e.g. after it shrank)."""
    excess = used + reserved - max_size
    chosen: list[Entry] = []
    for entry in lru:
        if excess <= 0:
            break
        if entry.pinned:
            continue
        chosen.append(entry)
        excess -= entry.size
    return chosen


def pinned_total(pinned: int, promised: int, incoming: int) -> int:
    """Bytes pinned once ``incoming`` more are: the pins so far and those promised to queued
    images. Every pin must fit in ``max_size``, or the cache could never make room."""
    return pinned + promised + incoming


def is_stalled(*, last_progress: float, now: float, stall_time: float) -> bool:
    """A fill stalls when no byte arrived for ``stall_time`` seconds (not by age)."""
    return now - last_progress >= stall_time
