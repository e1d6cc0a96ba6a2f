"""A caller's request body on its way to Glance, sent so that Glance's answer is never lost.

Glance answers some uploads before reading their body (403 for an image the
caller may not write, 409 for an active image, 413) and closes the
connection; with bytes left unread the close is an RST. Its answer is in
edgecache's receive queue by then, ahead of the RST. But when asyncio's
transport is the one whose ``send`` meets the RST, it closes the socket at
once (``_SelectorSocketTransport._fatal_error``) and the queued answer is
never read: the caller would get a 503 for what was Glance's 403.

So the body does not go through the transport: after aiohttp has sent the
request head, :class:`RelayedBody` writes the body on a duplicate of the
connection's socket (``TransportSocket.dup``) with ``loop.sock_sendall``. A
failed send there leaves the transport reading; the body stops, waits until
the transport has read what Glance sent and lost the connection, and then
fails, so aiohttp closes the connection (never pools it) and hands back the
answer that came. TLS connections cannot be written beside their transport;
their bodies go the usual way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from aiohttp.abc import AbstractStreamWriter
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_writer import StreamWriter
from aiohttp.payload import StreamReaderPayload

LOG = logging.getLogger(__name__)

#: How long a failed body waits for the transport to read Glance's answer (s).
#: The answer is already in the kernel's queue, so this is a safety net only.
_ANSWER_WAIT = 5.0


class RelayedBody(StreamReaderPayload):
    """A streamed request body whose failed send still lets the response be read."""

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        transport = writer.transport if isinstance(writer, StreamWriter) else None
        raw = transport.get_extra_info("socket") if transport is not None else None
        if (
            transport is None
            or raw is None
            or transport.get_extra_info("sslcontext") is not None
            or not isinstance(writer, StreamWriter)
            # aiohttp internals this relies on; without them, the usual way
            or not hasattr(writer, "send_headers")
            or not hasattr(writer.protocol, "closed")
        ):
            await super().write_with_length(writer, content_length)
            return
        writer.send_headers()
        # The head must be in the kernel before any body byte goes out beside it.
        while transport.get_write_buffer_size() and not transport.is_closing():
            await writer.drain()
            await asyncio.sleep(0)
        spare: socket.socket = raw.dup()
        try:
            spare.setblocking(False)
            await self._send(spare, writer, content_length)
        finally:
            spare.close()

    async def _send(
        self, spare: socket.socket, writer: StreamWriter, content_length: int | None
    ) -> None:
        loop = asyncio.get_running_loop()
        left = content_length
        assert self._iter is not None
        self._consumed = True
        async for chunk in self._iter:
            if left is not None:
                chunk = chunk[:left]
                left -= len(chunk)
            if not chunk:
                continue
            framed = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") if writer.chunked else chunk
            try:
                await loop.sock_sendall(spare, framed)
            except OSError as exc:
                await _answer_read(writer)
                raise ConnectionResetError(exc.errno, f"request body cut off: {exc}") from exc
        self._iter = None


async def _answer_read(writer: StreamWriter) -> None:
    """Wait until the transport has read everything up to the peer's close."""
    protocol = writer.protocol
    if not isinstance(protocol, ResponseHandler):
        return
    closed = protocol.closed
    if closed is None:
        return  # connection_lost has run: whatever came is parsed
    with contextlib.suppress(Exception, TimeoutError):  # not wait_for: see clock.wait
        async with asyncio.timeout(_ANSWER_WAIT):
            await asyncio.shield(closed)
