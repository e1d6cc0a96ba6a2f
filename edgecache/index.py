"""The table of committed images: what is on disk, its size, its recency.

Plain in-memory state owned by :class:`edgecache.cache.ImageCache`; durability is
:mod:`edgecache.diskstore`'s job.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from edgecache.upstream import ImageMeta


@dataclass
class Entry:
    """One committed image file."""

    image_id: str
    size: int
    checksum: str | None = None
    os_hash_algo: str | None = None
    os_hash_value: str | None = None
    updated_at: str | None = None
    committed_at: float = 0.0
    last_access: float = 0.0
    hits: int = 0
    pinned: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_meta(cls, meta: ImageMeta, *, size: int, now: float) -> Entry:
        return cls(
            image_id=meta.id,
            size=size,
            checksum=meta.checksum,
            os_hash_algo=meta.os_hash_algo,
            os_hash_value=meta.os_hash_value,
            updated_at=meta.updated_at,
            committed_at=now,
            last_access=now,
        )

    def matches(self, meta: ImageMeta) -> bool:
        """Whether upstream still describes the bytes this entry holds.

        The hashes say it when the image carries one (a property edit changes
        ``updated_at`` but never the bytes of an active image). An image with no
        hash at all (a location added by an admin) has only its size, so there
        a changed ``updated_at`` counts as changed bytes: refetch, never serve.
        """
        return (
            meta.size == self.size
            and meta.os_hash_value == self.os_hash_value
            and meta.checksum == self.checksum
            and (
                bool(self.os_hash_value or self.checksum) or meta.updated_at == self.updated_at
            )
        )

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Entry:
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in record.items() if k in known})


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
