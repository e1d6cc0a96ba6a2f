"""An image body read from an HTTP response: Glance's ``/file``, a store object, a tier.

The fill pumps these; every HTTP source hands them over the same way, so a
ranged answer (200 from 0, or 206 from the offset asked) is judged in one place.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import AsyncIterator, Callable

import aiohttp

from edgecache.errors import NotFound, UpstreamError
from edgecache.model import RawStream

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
        read_timeout: float | None = None,
    ) -> None:
        self._response = response
        self.content_length = response.content_length
        self.start = start
        #: called once when the body breaks off (the sender is then rested)
        self._on_break = on_break
        #: the session's sock_read, kept when the body is read off the socket
        self._read_timeout = read_timeout

    def detach(self) -> RawStream | None:
        """The connection's socket, for a fill to read the body in a thread.

        Only a plain body qualifies: no TLS, no chunked framing, no content
        coding, so the bytes on the socket are the image's. What aiohttp has
        already received is handed over first; then its transport stops reading
        and the connection is never reused (:meth:`close` closes it).
        """
        response = self._response
        connection = response.connection
        transport = connection.transport if connection is not None else None
        if connection is None or transport is None or transport.is_closing():
            return None
        if transport.get_extra_info("sslcontext") is not None:
            return None
        if "chunked" in response.headers.get("Transfer-Encoding", "").lower():
            return None
        if response.headers.get("Content-Encoding", "identity").lower() != "identity":
            return None
        sock = transport.get_extra_info("socket")
        protocol = connection.protocol
        content = response.content
        if sock is None or protocol is None or content.exception() is not None:
            return None
        try:
            head = _drain(content, protocol)
        except (TimeoutError, aiohttp.ClientError) as exc:
            if self._on_break is not None:
                self._on_break()
            raise UpstreamError(f"image body broke off: {exc!r}", reason="body") from exc
        remaining = None
        if self.content_length is not None:  # total_bytes: all the parser gave the stream
            remaining = max(0, self.content_length - content.total_bytes)
        elif content.is_eof():
            remaining = 0
        own = socket.socket(fileno=os.dup(sock.fileno()))
        own.setblocking(False)
        return RawStream(own, head, remaining, self._read_timeout, self._on_break)

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


def _drain(content: aiohttp.StreamReader, protocol: aiohttp.client_proto.ResponseHandler) -> bytes:
    """Every body byte aiohttp holds, then its transport paused for good.

    Bytes wait in two places: the response's stream, and (when flow control
    paused it) the parser's own tail, which resuming pushes into the stream.
    Nothing is read from the socket meanwhile: resuming only registers the
    socket with the loop, and the pause lands in the same turn.
    """
    pieces: list[bytes] = []
    while True:
        while piece := content.read_nowait(-1):
            pieces.append(piece)
        protocol.resume_reading()  # parses a held tail into the stream, if any
        if not (piece := content.read_nowait(-1)):
            break
        pieces.append(piece)
    protocol.pause_reading()
    return b"".join(pieces)


def content_range_start(header: str) -> int | None:
    match = re.match(r"^\s*bytes\s+(\d+)-\d+/(?:\d+|\*)\s*$", header)
    return int(match.group(1)) if match else None


def store_body(
    display: str, response: aiohttp.ClientResponse, offset: int,
    *, read_timeout: float | None = None,
) -> HttpBody:
    """A store's answer to a (possibly ranged) object GET, as a body a fill can pump.

    A 200 is taken even when a Range was asked (the fill drops what it already
    has); a 206 only if it starts at ``offset``; 404/410 is NotFound; anything
    else is a store failure. ``display`` names the object without credentials.
    """
    if response.status == 200:
        return HttpBody(response, read_timeout=read_timeout)
    if response.status == 206 and offset:
        if content_range_start(response.headers.get("Content-Range", "")) == offset:
            return HttpBody(response, start=offset, read_timeout=read_timeout)
        response.close()
        raise UpstreamError(f"{display}: a 206 that does not start at {offset}", reason="store")
    response.close()
    if response.status in (404, 410):
        raise NotFound(f"{display}: {response.status}")
    raise UpstreamError(f"{display}: answered {response.status}", reason="store")
