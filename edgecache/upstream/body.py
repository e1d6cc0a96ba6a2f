"""An image body read from an HTTP response: Glance's ``/file``, a store object, a tier.

The fill pumps these; every HTTP source hands them over the same way, so a
ranged answer (200 from 0, or 206 from the offset asked) is judged in one place.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable

import aiohttp

from edgecache.errors import NotFound, UpstreamError

#: Pieces of an image body already received are joined up to this size.
_BATCH = 1 << 20


class HttpBody:
    """A 200 image-data response being read."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        start: int = 0,
        *,
        on_break: Callable[[], None] | None = None,
    ) -> None:
        self._response = response
        self.content_length = response.content_length
        self.start = start
        #: called once when the body breaks off (the sender is then rested)
        self._on_break = on_break

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            while chunk := await content.readany():
                # Hand the fill batches of what has already arrived, not each
                # socket read: every piece costs a write and a hash hand-off to a
                # thread and wakes every reader.
                if len(chunk) < _BATCH:
                    pieces = [chunk]
                    size = len(chunk)
                    while size < _BATCH and (more := content.read_nowait()):
                        pieces.append(more)
                        size += len(more)
                    if len(pieces) > 1:
                        chunk = b"".join(pieces)
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            if self._on_break is not None:
                self._on_break()
            raise UpstreamError(f"image body broke off: {exc!r}", reason="body") from exc

    def close(self) -> None:
        self._response.close()


def content_range_start(header: str) -> int | None:
    match = re.match(r"^\s*bytes\s+(\d+)-\d+/(?:\d+|\*)\s*$", header)
    return int(match.group(1)) if match else None


def store_body(display: str, response: aiohttp.ClientResponse, offset: int) -> HttpBody:
    """A store's answer to a (possibly ranged) object GET, as a body a fill can pump.

    A 200 is taken even when a Range was asked (the fill drops what it already
    has); a 206 only if it starts at ``offset``; 404/410 is NotFound; anything
    else is a store failure. ``display`` names the object without credentials.
    """
    if response.status == 200:
        return HttpBody(response)
    if response.status == 206 and offset:
        if content_range_start(response.headers.get("Content-Range", "")) == offset:
            return HttpBody(response, start=offset)
        response.close()
        raise UpstreamError(f"{display}: a 206 that does not start at {offset}", reason="store")
    response.close()
    if response.status in (404, 410):
        raise NotFound(f"{display}: {response.status}")
    raise UpstreamError(f"{display}: answered {response.status}", reason="store")
