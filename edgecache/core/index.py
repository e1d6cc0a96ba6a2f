"""The table of committed images: what is on disk, its size, its recency.

Plain in-memory state owned by :class:`~edgecache.core.cache.ImageCache`; durability is
:mod:`edgecache.core.diskstore`'s job.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from edgecache.model import Entry


class Index:
    """Committed entries in least-recently-used-first order, with their byte total."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self.total_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._entries

    def get(self, image_id: str) -> Entry | None:
        return self._entries.get(image_id)

    def add(self, entry: Entry) -> None:
        self.remove(entry.image_id)
        self._entries[entry.image_id] = entry
        self._entries.move_to_end(entry.image_id)
        self.total_bytes += entry.size

    def load(self, entries: list[Entry]) -> None:
        """Add entries restored from disk, oldest access first."""
        for entry in sorted(entries, key=lambda e: e.last_access):
            self.add(entry)

    def remove(self, image_id: str) -> Entry | None:
        entry = self._entries.pop(image_id, None)
        if entry is not None:
            self.total_bytes -= entry.size
        return entry

    def touch(self, image_id: str, now: float) -> Entry | None:
        """Record an access: the entry becomes the most recently used."""
        entry = self._entries.get(image_id)
        if entry is not None:
            entry.last_access = now
            entry.hits += 1
            self._entries.move_to_end(image_id)
        return entry

    def lru_order(self) -> Iterator[Entry]:
        """Entries from least to most recently used."""
        return iter(list(self._entries.values()))
