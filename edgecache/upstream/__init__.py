"""What edgecache needs from wherever image bytes come from.

Only modules in this package talk to the network. The cache sees an
:class:`ImageMeta` and an :class:`ImageBody`; which server produced them is not
its business.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

#: Image ids are UUIDs in Glance's schema; anything else can never name an image.
UUID_PATTERN = (
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


@dataclass(frozen=True)
class ImageMeta:
    """The fields of Glance's image record that decide what edgecache may serve."""

    id: str
    status: str
    size: int | None
    checksum: str | None
    os_hash_algo: str | None
    os_hash_value: str | None
    updated_at: str | None
    #: where the bytes sit in Glance's stores (``locations`` urls, then ``direct_url``),
    #: when Glance shows them; read directly only with ``[upstream] direct_stores``
    locations: tuple[str, ...] = ()

    @classmethod
    def from_glance(cls, record: Mapping[str, Any]) -> ImageMeta:
        size = record.get("size")
        return cls(
            id=str(record["id"]),
            status=str(record.get("status", "")),
            size=int(size) if isinstance(size, int) else None,
            checksum=_text_or_none(record.get("checksum")),
            os_hash_algo=_text_or_none(record.get("os_hash_algo")),
            os_hash_value=_text_or_none(record.get("os_hash_value")),
            updated_at=_text_or_none(record.get("updated_at")),
            locations=_locations(record),
        )

    def strongest_hash(self) -> tuple[str, str] | None:
        """The (algorithm, hex digest) to verify against: os_hash first, md5 second.

        One hash is enough (spec §5.4): the strongest the image carries.
        """
        if self.os_hash_value and self.os_hash_algo:
            algo = self.os_hash_algo.lower()
            if algo in hashlib.algorithms_available:
                return algo, self.os_hash_value.lower()
        if self.checksum:
            return "md5", self.checksum.lower()
        return None

    def same_content(self, other: ImageMeta) -> bool:
        """Whether two records describe the same bytes (a changed image is refetched)."""
        return (
            self.size == other.size
            and self.os_hash_value == other.os_hash_value
            and self.checksum == other.checksum
        )


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _locations(record: Mapping[str, Any]) -> tuple[str, ...]:
    """Store URLs in Glance's order: ``locations`` (show_multiple_locations), ``direct_url``."""
    urls: list[str] = []
    entries = record.get("locations")
    for entry in entries if isinstance(entries, list) else ():
        url = entry.get("url") if isinstance(entry, Mapping) else None
        if isinstance(url, str) and url and url not in urls:
            urls.append(url)
    direct = record.get("direct_url")
    if isinstance(direct, str) and direct and direct not in urls:
        urls.append(direct)
    return tuple(urls)


class ImageBody(Protocol):
    """An open upstream image-data response, 200 and ready to stream."""

    #: Content-Length as announced, None for a close-delimited or chunked body.
    content_length: int | None
    #: image offset of the body's first byte: 0, or where a resumed (206) body starts
    start: int

    def chunks(self) -> AsyncIterator[bytes]:
        """The body, in the pieces the transport delivered them."""
        ...

    def close(self) -> None:
        """Release the connection (a half-read body is never reused)."""
        ...


class ImageSource(Protocol):
    """Where fills read image bytes from."""

    async def open_image(
        self,
        image_id: str,
        headers: Mapping[str, str],
        *,
        offset: int = 0,
        meta: ImageMeta | None = None,
    ) -> ImageBody:
        """Start (``offset`` 0) or resume a download.

        ``meta`` is the record the fill was started for (its store locations, its
        size); a source that needs nothing from it ignores it.
        Raises UpstreamRefused / UpstreamError unless the answer is a 200, or a
        206 starting at ``offset`` when resuming.
        """
        ...
