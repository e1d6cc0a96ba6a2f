"""A bounded map whose values expire a fixed time after they were set, on an injected clock.

Glance's answers are reused for a short time and then asked again. Keeping
them in a map of our own (rather than a caching library's timers) lets the
expiry run on :class:`edgecache.clock.Clock`, so tests move time instead of
sleeping, and bounds memory: callers with many tokens cannot grow it forever.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

from edgecache.clock import SYSTEM, Clock

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TTLMap(Generic[K, V]):
    """At most ``max_size`` values, each readable for ``ttl`` seconds after it was set.

    Expiry is by monotonic time, and a value set at ``t`` is still read at
    ``t + ttl`` (stale only after). One ttl for the whole map keeps the oldest
    value at the front, so expired values are dropped from there as new ones
    come in; when full, the oldest value makes room. ``ttl <= 0`` keeps nothing.
    """

    def __init__(self, *, ttl: float, max_size: int, clock: Clock = SYSTEM) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.ttl = ttl
        self.max_size = max_size
        self._clock = clock
        #: key -> (monotonic time it was set, value), oldest first
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def _fresh(self, stamp: float, now: float) -> bool:
        return now - stamp <= self.ttl

    def get(self, key: K) -> V | None:
        """The value if it was set at most ``ttl`` seconds ago, else None."""
        item = self._items.get(key)
        if item is None:
            return None
        stamp, value = item
        if not self._fresh(stamp, self._clock.monotonic()):
            del self._items[key]
            return None
        return value

    def set(self, key: K, value: V) -> None:
        """Keep ``value`` for ``ttl`` seconds from now, replacing any older one."""
        self._items.pop(key, None)
        if self.ttl <= 0:
            return
        now = self._clock.monotonic()
        self._items[key] = (now, value)
        while self._items:
            oldest, (stamp, _) = next(iter(self._items.items()))
            if self._fresh(stamp, now) and len(self._items) <= self.max_size:
                break
            del self._items[oldest]

    def pop(self, key: K) -> None:
        """Forget a key (nothing happens if it is not there)."""
        self._items.pop(key, None)

    def __len__(self) -> int:
        """How many values are held, including expired ones not dropped yet."""
        return len(self._items)
