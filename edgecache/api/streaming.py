"""Sending image bytes from a file descriptor, in bounded slices.

One send of a whole multi-GiB file lets a fast client monopolise the sender; slices
of a few MiB let every connection take its turn (docs/behaviour.md#hits). The same
loop tails a growing partial file: it sends what the fill has made readable, then
waits for more.

The sends themselves run in a small pool of sender threads (:class:`Senders`), each
a ``preadv`` into the thread's own buffer and a ``write`` to the socket: both release
the GIL, so responses use every core, and the kernel's time inside them (the copies,
loopback's receive path) never stalls the event loop. A thread only sends what
the socket takes at once; waiting for a slow client to make room is the loop's
job, so a client that stops reading holds no thread. Slices shrink as more
responses share the pool, so a new response's first bytes never queue behind many
large slices.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from aiohttp import web

#: Bytes per slice the loop sends itself (TLS, no sender threads): big enough that
#: per-call overhead stays small, small enough that 8 or 50 clients interleave fairly.
SLICE = 2 << 20

#: Bytes a response sent past aiohttp's writer (the sender threads, the loop's sendfile):
#: its byte count (``body_length``) misses them; the access line adds them back.
SENDFILE_BYTES_KEY = web.RequestKey("edgecache.sendfile_bytes", int)
#: The status of a response whose last byte went out as its handler was cancelled (the
#: client hung up once it had them all): its access line says it was served.
SERVED_WHOLE_KEY = web.RequestKey("edgecache.served_whole", int)


#: Sender threads: a few per core (a thread may also wait on the disk for a page).
SENDER_THREADS = 4 * (os.cpu_count() or 1)
#: Bytes in flight across every response's slice: each gets its share of it...
_SLICES_TOTAL = 64 << 20
#: ...within these bounds.
_SLICE_MIN, _SLICE_MAX = 256 << 10, 8 << 20


class Senders:
    """The threads that send every response's bytes (see the module's docstring)."""

    def __init__(self, threads: int | None = None) -> None:
        self._pool = ThreadPoolExecutor(threads or SENDER_THREADS, thread_name_prefix="send")
        #: responses sending now: the slice each gets shrinks as they grow
        self.active = 0

    def slice(self) -> int:
        return max(_SLICE_MIN, min(_SLICE_MAX, _SLICES_TOTAL // max(1, self.active)))

    def send(
        self, sock: int, file: int, offset: int, count: int
    ) -> asyncio.Future[tuple[int, bool]]:
        """Send up to ``count`` bytes of ``file`` from ``offset`` on ``sock``, in a thread.

        Resolves to the bytes sent and whether the file ended first (it holds
        fewer bytes than asked). Fewer bytes sent with ``False``: the socket is full.
        """
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._pool, _send_now, sock, file, offset, count)

    def close_later(self, descriptors: tuple[int, int]) -> None:
        try:
            self._pool.submit(_close_both, descriptors)
        except RuntimeError:  # shut down: nothing else runs there any more
            _close_both(descriptors)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


#: The app's senders (daemon/app.py makes them); without them the loop sends.
SENDERS_KEY = web.AppKey("edgecache.senders", Senders)


#: Bytes a sender thread reads (``preadv``) and writes per call: one copy of this size
#: stays in the CPU's caches between the read and the write.
COPY_CHUNK = 1 << 20
_buffers = threading.local()


def _buffer() -> memoryview:
    """This sender thread's reused copy buffer."""
    view: memoryview | None = getattr(_buffers, "view", None)
    if view is None:
        view = _buffers.view = memoryview(bytearray(COPY_CHUNK))
    return view


def _send_now(sock: int, file: int, offset: int, count: int) -> tuple[int, bool]:
    """In a sender thread: read the file and write the (non-blocking) socket while it
    takes bytes. A read-and-write beats ``sendfile`` into loopback TCP: on the 2-core
    bench machines one client got 4.6-4.8 GB/s from a cached file this way against
    2.2-2.8 with ``sendfile``, and 8 clients 5.4 against 4.3; the receiving side copies
    out of large buffers instead of page by page. A read that comes back short ends the
    file, so a file truncated under us is noticed as with ``sendfile`` (an ``mmap`` would
    raise SIGBUS instead)."""
    buffer, sent = _buffer(), 0
    while sent < count:
        chunk = buffer[: min(COPY_CHUNK, count - sent)]
        got = os.preadv(file, [chunk], offset + sent)
        if got == 0:
            return sent, True
        written = 0
        while written < got:
            try:
                written += os.write(sock, chunk[written:got])
            except (BlockingIOError, InterruptedError):
                return sent + written, False
            except OSError as exc:
                if sent + written:  # those went out: the next slice meets the error again
                    return sent + written, False
                if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF):
                    raise ClientGone(str(exc)) from exc
                raise
        sent += got
    return sent, False


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
    status: int = 200,
) -> None:
    """Send bytes [start, stop) of ``fd`` on the prepared response's connection.

    ``readable(offset)`` waits until bytes past ``offset`` may be sent and returns
    how far; without it the whole file is readable. Raises whatever ``readable``
    raises (a failed fill) after ``on_sent`` has counted what went out, and
    FileShrank when the file holds fewer bytes than it must (the caller cuts the
    connection: the client must never wait out a socket timeout for them).
    ``status`` is the prepared response's, for the access line of a client that
    hangs up the moment the last byte reaches it.
    """
    loop = asyncio.get_running_loop()
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ClientGone("client went away")
    senders = request.app.get(SENDERS_KEY)
    sock = transport.get_extra_info("socket")
    if (transport.get_extra_info("sslcontext") is not None or sock is None
            or not hasattr(os, "preadv")):
        senders = None  # TLS bytes are the transport's to make (or no preadv): the loop's
    # The threads' own descriptors of the socket and the file, closed only once no
    # thread uses them: if the connection or the caller closes theirs meanwhile, a
    # number a thread sends with is never one a new file or socket has been given.
    own = (os.dup(sock.fileno()), os.dup(fd)) if senders is not None else None
    sending: asyncio.Future[tuple[int, bool]] | None = None
    if senders is not None:
        senders.active += 1
    try:
        # closefd=False: the caller owns ``fd`` and closes it off the loop (its file
        # offset is the caller's own anyway).
        with os.fdopen(fd, "rb", buffering=0, closefd=False) as file:
            offset = start
            while offset < stop:
                end = stop if readable is None else min(stop, await readable(offset))
                while offset < end:
                    count = min(SLICE if senders is None else senders.slice(), end - offset)
                    if transport.is_closing():
                        raise ClientGone("client went away")
                    if own is not None:
                        assert senders is not None
                        if transport.get_write_buffer_size():
                            # aiohttp still holds bytes for the socket (the headers, to
                            # a full one): they go first, flushed by the loop as the
                            # client makes room; then the threads send again.
                            await _writable(loop, own[0])
                            await asyncio.sleep(0)
                            continue
                        sending = senders.send(*own, offset, count)
                        sent, ended = await _counted_if_cancelled(
                            sending, request, on_sent, whole=(stop - offset, status))
                        if not sent and not ended:
                            # The socket is full: the loop waits until the client makes
                            # room; the next slice goes to a thread again.
                            await _writable(loop, own[0])
                            continue
                    else:
                        # No threads (TLS, or an app without senders): the loop sends,
                        # with asyncio's sendfile and its fallback.
                        sending = asyncio.ensure_future(
                            _loop_send(loop, transport, file, offset, count))
                        sent, ended = await _counted_if_cancelled(
                            sending, request, on_sent, whole=(stop - offset, status))
                    offset += sent
                    _count(request, sent, on_sent)
                    if ended:
                        if transport.is_closing():
                            raise ClientGone("client went away")
                        raise FileShrank(f"the file ends at {offset}, before byte {stop}")
    finally:
        if senders is not None:
            senders.active -= 1
        if own is not None:
            assert senders is not None
            # In a thread (an evicted file's last close frees its blocks, which can take
            # a while); after the slice still running, if cancelled mid-slice.
            if sending is not None and not sending.done():
                sending.add_done_callback(lambda _: senders.close_later(own))
            else:
                senders.close_later(own)


def _count(request: web.Request, sent: int, on_sent: Callable[[int], None] | None) -> None:
    request[SENDFILE_BYTES_KEY] = request.get(SENDFILE_BYTES_KEY, 0) + sent
    if on_sent is not None and sent:
        on_sent(sent)


async def _loop_send(
    loop: asyncio.AbstractEventLoop, transport: asyncio.BaseTransport, file: BinaryIO,
    offset: int, count: int,
) -> tuple[int, bool]:
    """One slice sent by the loop itself (after the bytes aiohttp still holds)."""
    assert isinstance(transport, asyncio.WriteTransport)
    try:
        sent = await loop.sendfile(transport, file, offset, count, fallback=True)
    except (ConnectionError, RuntimeError) as exc:
        raise ClientGone(str(exc)) from exc
    return sent, sent < count


async def _counted_if_cancelled(
    sending: asyncio.Future[tuple[int, bool]], request: web.Request,
    on_sent: Callable[[int], None] | None, *, whole: tuple[int, int],
) -> tuple[int, bool]:
    """Await a slice; if the response is cancelled meanwhile (the client left), the
    bytes the slice still sent are counted before the cancellation goes on: the
    access line of a client that hangs up says what it got. ``whole``: the bytes
    left in the response and its status; a slice that sent them all served it."""
    try:
        return await asyncio.shield(sending)
    except asyncio.CancelledError:
        if isinstance(sending, asyncio.Task) and not sending.done():
            sending.cancel()  # the loop's own send may wait on a client: never for it
        try:
            sent, _ = await sending  # a thread's send returns as soon as the socket is full
        except (OSError, asyncio.CancelledError):
            sent = 0
        _count(request, sent, on_sent)
        if sent == whole[0]:
            request[SERVED_WHOLE_KEY] = whole[1]
        raise


async def _writable(loop: asyncio.AbstractEventLoop, sock: int) -> None:
    """Wait until ``sock`` (a descriptor of our own, never the transport's) takes bytes,
    or has failed: the next send then says which."""
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(sock, wake)
    try:
        await ready
    finally:
        loop.remove_writer(sock)


def _close_both(descriptors: tuple[int, int]) -> None:
    for descriptor in descriptors:
        os.close(descriptor)


def abort(request: web.Request) -> None:
    """Cut the connection so the client sees a short body, never a clean end."""
    if request.transport is not None:
        request.transport.abort()
