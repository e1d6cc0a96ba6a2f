"""A fill's upstream bytes, read off the socket in a thread: never through the event loop.

The serving loop has a thousand other things to do while an image streams in
at a GB/s: answering hits, other clients' headers, its own timers. So once the
response headers are in, the fill takes the body's socket out of the HTTP
client (:class:`~edgecache.model.RawStream`) and one thread per fill does the
rest: ``recv_into`` a few reused buffers, ``pwrite`` each to the partial file,
and hand it to the hash thread, which hashes it side by side with the next
read. The loop only learns where the bytes on disk end (``on_landed``), and
only as often as it can take it.

A buffer goes back to the pool once both the write and the hash are done with
it, so a fill holds :data:`BUFFERS` times :data:`BUFFER_SIZE` bytes, whatever the
image size.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future

from edgecache.errors import ShortBody, UpstreamError
from edgecache.model import RawStream

#: Bytes per buffer: big enough that per-chunk costs (a hash hand-off, a wake of the
#: loop) stay small at GB/s, small enough that the first bytes go out at once.
BUFFER_SIZE = 1 << 20
#: Buffers per fill: one being read into, one being hashed, and slack for either.
BUFFERS = 4


class IntakeStopped(Exception):
    """The fill was cancelled: the intake stopped reading."""


class Intake:
    """One body read off its socket into a fill's partial file, in the calling thread.

    ``write(data, offset)`` puts bytes on disk (raising what the fill wants to see
    on a disk error); ``hash_chunk(data, end)`` runs in ``hashing`` (one thread,
    so in order); ``on_landed(end)`` is told, in this thread, where the bytes
    written so far end.
    """

    def __init__(
        self,
        raw: RawStream,
        *,
        offset: int,
        skip: int,
        limit: int,
        write: Callable[[memoryview, int], None],
        hash_chunk: Callable[[memoryview, int], None],
        hashing: Executor,
        on_landed: Callable[[int], None],
        on_received: Callable[[int], None] | None = None,
    ) -> None:
        self._raw = raw
        self._sock = raw.sock
        #: the image offset the next kept byte goes to
        self.offset = offset
        #: leading body bytes to drop (a 200 answer to a resume starts at 0)
        self._skip = skip
        #: the image's size: a byte past it is an upstream fault
        self._limit = limit
        self._write = write
        self._hash_chunk = hash_chunk
        self._hashing = hashing
        self._on_landed = on_landed
        self._on_received = on_received
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(BUFFERS):
            self._free.put(bytearray(BUFFER_SIZE))
        self._hashes: list[Future[None]] = []
        self._stopped = threading.Event()
        self._poll = select.poll()
        self._poll.register(self._sock.fileno(), select.POLLIN | select.POLLPRI)

    def stop(self) -> None:
        """End :meth:`run` soon (from any thread): its read wakes up and it raises."""
        self._stopped.set()
        # Already closed, or never connected: run() sees the flag.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> int:
        """Read the body to its end; returns the offset after its last byte.

        Raises UpstreamError (reason "body") when it breaks off, ShortBody when
        it overruns the image, :class:`IntakeStopped` after :meth:`stop`, and
        whatever ``write`` raises. The hashes of everything read have run when
        it returns or raises; the socket is closed.
        """
        try:
            remaining = self._raw.remaining
            if self._raw.head:
                self._take(bytearray(self._raw.head), len(self._raw.head), pooled=False)
            while remaining is None or remaining > 0:
                buffer = self._free.get()
                want = BUFFER_SIZE if remaining is None else min(BUFFER_SIZE, remaining)
                got = self._read(memoryview(buffer)[:want])
                if got == 0:
                    if remaining is None:
                        break  # a close-delimited body ends here
                    self._broke(f"the connection closed {remaining} bytes early")
                if remaining is not None:
                    remaining -= got
                self._take(buffer, got, pooled=True)
            return self.offset
        finally:
            self._settle()
            self._sock.close()

    # -- reading ------------------------------------------------------------------

    def _read(self, view: memoryview) -> int:
        """Bytes into ``view``: waits for the first, then takes what has arrived (0: EOF)."""
        got = self._recv(view)
        while got and got < len(view):
            try:
                more = self._sock.recv_into(view[got:])
            except BlockingIOError:
                break
            except OSError as exc:
                self._broke(repr(exc))
            if not more:
                break  # EOF: the next read says so
            got += more
        return got

    def _recv(self, view: memoryview) -> int:
        timeout = self._raw.read_timeout
        wait_ms = -1 if timeout is None else max(1, int(timeout * 1000))
        while True:
            if self._stopped.is_set():
                raise IntakeStopped("the fill was cancelled")
            try:
                return self._sock.recv_into(view)
            except BlockingIOError:
                pass
            except OSError as exc:
                self._broke(repr(exc))
            if not self._poll.poll(wait_ms):
                self._broke(f"no bytes for {timeout} s")

    def _broke(self, why: str) -> None:
        if self._stopped.is_set():
            raise IntakeStopped("the fill was cancelled")
        if self._raw.on_break is not None:
            self._raw.on_break()
        raise UpstreamError(f"image body broke off: {why}", reason="body")

    # -- writing and hashing --------------------------------------------------------

    def _take(self, buffer: bytearray, length: int, *, pooled: bool) -> None:
        """Write and hash ``buffer[:length]``; the buffer returns to the pool after both."""
        if self._on_received is not None:
            self._on_received(length)
        view = memoryview(buffer)[:length]
        if self._skip:
            dropped = min(self._skip, length)
            self._skip -= dropped
            view = view[dropped:]
        if not view:
            self._give_back(buffer, pooled)
            return
        start, end = self.offset, self.offset + len(view)
        if end > self._limit:
            self._give_back(buffer, pooled)
            raise ShortBody(f"upstream sent more than the image's {self._limit} bytes")
        hashed = self._hashing.submit(self._hash_chunk, view, end)
        hashed.add_done_callback(lambda _: self._give_back(buffer, pooled))
        self._hashes.append(hashed)
        self.offset = end
        self._write(view, start)
        self._on_landed(end)
        self._hashes = [h for h in self._hashes if not h.done()]

    def _give_back(self, buffer: bytearray, pooled: bool) -> None:
        if pooled:
            self._free.put(buffer)

    def _settle(self) -> None:
        """Wait for every hash handed out (a cancelled one counts as done)."""
        for hashed in self._hashes:
            # A shut-down pool cancels what it had not run: the fill has ended then.
            with contextlib.suppress(BaseException):
                hashed.result()
