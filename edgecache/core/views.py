"""What the cache shows of itself: the values its read model hands out.

Plain data, no behaviour of the cache's own: the API, the scrubber, the
prefetcher and the request decision read these, never the cache's internals.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from edgecache.model import Entry, ImageMeta


@dataclass(frozen=True)
class Hit:
    """A committed image opened for one reader (the caller closes ``fd``)."""

    entry: Entry
    fd: int


class Copy(enum.Enum):
    """What the cache holds of the bytes a record describes."""

    ABSENT = "absent"
    #: committed, and the record still describes its bytes
    SAME = "same"
    #: committed, but the record now describes other bytes: evict, never serve
    CHANGED = "changed"


class FillState(enum.Enum):
    """The fill running for an image, measured against a record."""

    NONE = "none"
    #: a fill of exactly these bytes, still receiving them
    RUNNING = "running"
    #: a fill of these bytes that has verified all of them (only its commit is left)
    VERIFIED = "verified"
    #: a fill of other bytes (the image changed meanwhile): neither joined nor replaced
    OTHER = "other"


@dataclass(frozen=True)
class Usage:
    """Byte and image totals, as the cache API and the health check show them."""

    size: int
    reserved: int
    max_size: int
    pinned: int
    images: int
    fills: int


@dataclass(frozen=True)
class FillProgress:
    """One fill in progress, as operators see it."""

    image_id: str
    bytes_done: int
    bytes_total: int
    #: started by a prefetch no live caller has joined (still paced)
    prefetch: bool
    verified: bool


@dataclass(frozen=True)
class Cooldown:
    """Why an image's last fill failed, and until when no new fill starts for it."""

    meta: ImageMeta
    until: float
    reason: str

    def retry_after(self, now: float) -> float:
        return max(0.0, self.until - now)


@dataclass(frozen=True)
class Rejection:
    """An image the format inspector refused (core/inspection.py): no fill of these bytes
    starts again; callers get the refusal."""

    meta: ImageMeta
    reason: str
    detail: str
    #: the format the inspector found, if it found one
    detected: str | None
    #: wall time of the refusal
    at: float


#: where the scrubber's last good re-hash is kept in an entry's ``extra``
VERIFIED_AT = "verified_at"
#: the format the inspector found when the entry was filled, in its ``extra``
DETECTED_FORMAT = "detected_format"
#: the record's ``disk_format`` when the entry was filled, in its ``extra``
DISK_FORMAT = "disk_format"


def verified_at(entry: Entry) -> float:
    """When the entry's bytes were last known good: its last scrub, else its commit."""
    value = entry.extra.get(VERIFIED_AT)
    return float(value) if isinstance(value, (int, float)) else entry.committed_at
