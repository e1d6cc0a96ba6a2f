"""Sending image bytes from a file descriptor, in bounded slices.

One ``sendfile`` of a whole multi-GiB file lets a fast client monopolise the
event loop; slices of a few MiB let every connection take its turn (docs/behaviour.md#hits).
The same loop tails a growing partial file: it sends what the fill has made
readable, then waits for more.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

from aiohttp import web

#: Bytes per sendfile call: big enough that per-call overhead stays small, small
#: enough that 8 or 50 clients interleave fairly.
SLICE = 2 << 20

#: Bytes a response sent with sendfile: they bypass aiohttp's writer, so its
#: byte count (``body_length``) misses them; the access line adds them back.
SENDFILE_BYTES_KEY = web.RequestKey("edgecache.sendfile_bytes", int)


class ClientGone(ConnectionResetError):
    """The client closed its connection (not an error of ours)."""


class FileShrank(OSError):
    """The file ended before the bytes it was known to hold (truncated under us)."""


async def send_fd(
    request: web.Request,
    fd: int,
    start: int,
    stop: int,
    *,
    readable: Callable[[int], Awaitable[int]] | None = None,
    on_sent: Callable[[int], None] | None = None,
) -> None:
    """Send bytes [start, stop) of ``fd`` on the prepared response's connection.

    ``readable(offset)`` waits until bytes past ``offset`` may be sent and returns
    how far; without it the whole file is readable. Raises whatever ``readable``
    raises (a failed fill) after ``on_sent`` has counted what went out, and
    FileShrank when the file holds fewer bytes than it must (the caller cuts the
    connection: the client must never wait out a socket timeout for them).
    """
    loop = asyncio.get_running_loop()
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ClientGone("client went away")
    # closefd=False: the caller owns ``fd`` and closes it off the loop (a dup's close here
    # would be one more close on the loop; its file offset is the caller's own anyway).
    with os.fdopen(fd, "rb", buffering=0, closefd=False) as file:
        offset = start
        while offset < stop:
            end = stop if readable is None else min(stop, await readable(offset))
            while offset < end:
                count = min(SLICE, end - offset)
                if transport.is_closing():
                    raise ClientGone("client went away")
                try:
                    sent = await loop.sendfile(transport, file, offset, count, fallback=True)
                except (ConnectionError, RuntimeError) as exc:
                    raise ClientGone(str(exc)) from exc
                offset += sent
                request[SENDFILE_BYTES_KEY] = request.get(SENDFILE_BYTES_KEY, 0) + sent
                if on_sent is not None and sent:
                    on_sent(sent)
                if sent < count:
                    if transport.is_closing():
                        raise ClientGone("client went away")
                    raise FileShrank(f"the file ends at {offset}, before byte {stop}")


def abort(request: web.Request) -> None:
    """Cut the connection so the client sees a short body, never a clean end."""
    if request.transport is not None:
        request.transport.abort()
