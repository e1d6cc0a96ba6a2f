"""The nouns every layer shares: an image as Glance records it, a committed entry, a body.

:class:`ImageMeta` is Glance's record, :class:`Entry` a committed copy, and
:func:`same_bytes` the one rule that says whether two of them describe the same
bytes (a cached copy, a fill in progress and a fresh record are all compared by
it). :class:`ImageSource` and :class:`ImageBody` are what the cache needs from
wherever image bytes come from; which server produced them is not its business.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

#: Image ids are UUIDs in Glance's schema; anything else can never name an image.
UUID_PATTERN = (
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_UUID = re.compile(UUID_PATTERN)


def image_id_of(text: str) -> str | None:
    """The image id ``text`` names, in the one form edgecache keys everything by, or None.

    A UUID names the same image in upper and lower case (Glance finds it either
    way), so lookups, fills, purges and evictions all use the lower-case form.
    """
    return text.lower() if _UUID.fullmatch(text) else None


@dataclass(frozen=True)
class SignatureProperties:
    """Glance's image-signature properties (the bytes signed, with a key the certificate in
    the key manager holds); any may be missing, which fails the verification."""

    signature: str | None
    hash_method: str | None
    key_type: str | None
    certificate_uuid: str | None

    @classmethod
    def from_glance(cls, record: Mapping[str, Any]) -> SignatureProperties | None:
        found = cls(
            signature=_text_or_none(record.get("img_signature")),
            hash_method=_text_or_none(record.get("img_signature_hash_method")),
            key_type=_text_or_none(record.get("img_signature_key_type")),
            certificate_uuid=_text_or_none(record.get("img_signature_certificate_uuid")),
        )
        return found if any(dataclasses.astuple(found)) else None


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
    #: what the record says the bytes are (qcow2, raw, ...): the format inspector's claim
    disk_format: str | None = None
    #: the image's ``img_signature*`` properties, when it carries any
    signature: SignatureProperties | None = None

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
            disk_format=_text_or_none(record.get("disk_format")),
            signature=SignatureProperties.from_glance(record),
        )

    def strongest_hash(self) -> tuple[str, str] | None:
        """The (algorithm, hex digest) to verify against: os_hash first, md5 second.

        One hash is enough: the strongest the image carries (docs/behaviour.md#integrity).
        """
        return strongest_hash(self)



class Described(Protocol):
    """What says which bytes an image holds: a Glance record or a committed entry."""

    @property
    def size(self) -> int | None: ...
    @property
    def checksum(self) -> str | None: ...
    @property
    def os_hash_algo(self) -> str | None: ...
    @property
    def os_hash_value(self) -> str | None: ...
    @property
    def updated_at(self) -> str | None: ...


def same_bytes(held: Described, record: Described) -> bool:
    """Whether ``record`` still describes the bytes ``held`` stands for.

    The hashes say it when the image carries one (a property edit changes
    ``updated_at`` but never the bytes of an active image). An image with no
    hash at all (a location added by an admin) has only its size, so there a
    changed ``updated_at`` counts as changed bytes: refetch, never serve.
    """
    return (
        record.size == held.size
        and record.os_hash_value == held.os_hash_value
        and record.checksum == held.checksum
        and (bool(held.os_hash_value or held.checksum) or record.updated_at == held.updated_at)
    )


def strongest_hash(image: Described) -> tuple[str, str] | None:
    """The (algorithm, hex digest) to verify against: os_hash first, md5 second."""
    if image.os_hash_value and image.os_hash_algo:
        algo = image.os_hash_algo.lower()
        if algo in hashlib.algorithms_available:
            return algo, image.os_hash_value.lower()
    if image.checksum:
        return "md5", image.checksum.lower()
    return None


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
        """Whether upstream still describes the bytes this entry holds (:func:`same_bytes`)."""
        return same_bytes(self, meta)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Entry:
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in record.items() if k in known})


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


@dataclass
class RawStream:
    """An image body's connection, taken out of the HTTP client to be read in a thread.

    The bytes on ``sock`` are the body itself (no TLS, no chunking, no content
    coding): the fill reads them into its own buffers, off the event loop.
    """

    #: a descriptor of its own (non-blocking), which the reader closes
    sock: socket.socket
    #: body bytes the client had already received when the stream was taken
    head: bytes
    #: body bytes still to come after ``head``; None: until the sender closes
    remaining: int | None
    #: longest wait for the next bytes (None: no limit), as the client's own
    read_timeout: float | None = None
    #: called once when the body breaks off (the sender is then rested)
    on_break: Callable[[], None] | None = None


@runtime_checkable
class DetachableBody(Protocol):
    """A body whose bytes can be read straight off its socket."""

    def detach(self) -> RawStream | None:
        """Take the connection out of the client (None: its bytes need the client)."""
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
