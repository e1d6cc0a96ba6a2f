"""One upstream read of one image, written to disk once, read by every caller.

A :class:`Fill` pumps an upstream body into a partial file. Writing and hashing
run in two dedicated threads, side by side (hashlib and ``pwrite`` release the
GIL), so the event loop only moves references. Readers do not get bytes from
the fill: they ``sendfile`` from their own descriptor of the partial file, up to
:meth:`Fill.readable_end`, and sleep on a future that is swapped on every advance.

Integrity rule: the image's last byte is withheld from every reader until the
whole body has been verified, so no response can end cleanly with wrong bytes.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edgecache.errors import ChecksumMismatch, FillAborted, ShortBody
from edgecache.upstream import ImageBody, ImageMeta

#: Writes (and hash updates) allowed in flight before the pump waits; with
#: upstream reads of up to ~2 MiB this bounds a fill's buffered memory.
_MAX_IN_FLIGHT = 4


class Fill:
    """A single-flight download of one image into a partial file."""

    def __init__(
        self,
        meta: ImageMeta,
        *,
        size: int,
        partial: Path,
        fd: int,
        verify: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.meta = meta
        self.image_id = meta.id
        self.size = size
        self.partial = partial
        self.fd = fd
        self.expected = meta.strongest_hash() if verify else None
        self._clock = clock
        self.last_progress = clock()
        self.written = 0
        self.verified = False
        self.error: BaseException | None = None
        self.stalled = False
        loop = asyncio.get_running_loop()
        #: resolved when upstream answered 200 (callers may send headers), or failed
        self.started: asyncio.Future[None] = loop.create_future()
        self._progress: asyncio.Future[None] = loop.create_future()
        self.readers = 0

    # -- the reader's side ----------------------------------------------------------

    def readable_end(self) -> int:
        """How many leading bytes readers may send now; raises if the fill failed."""
        if self.error is not None:
            raise FillAborted(f"fill of {self.image_id} failed: {self.error}") from self.error
        if self.verified:
            return self.size
        return max(0, min(self.written, self.size - 1))

    async def wait_readable(self, offset: int) -> int:
        """Wait until bytes past ``offset`` may be sent (or the image is complete)."""
        while True:
            end = self.readable_end()
            if end > offset or (self.verified and end >= offset):
                return end
            # shield: a reader that goes away must not cancel everyone's wake-up
            await asyncio.shield(self._progress)

    async def wait_started(self) -> None:
        await asyncio.shield(self.started)

    def open_reader(self) -> int:
        """A private descriptor of the partial file for one reader (caller closes it)."""
        return os.dup(self.fd)

    # -- the writer's side ----------------------------------------------------------

    def mark_started(self) -> None:
        if not self.started.done():
            self.started.set_result(None)

    def fail(self, exc: BaseException) -> None:
        """Abort every reader: before headers they answer an error, after it they cut."""
        if self.error is None and not self.verified:
            self.error = exc
        if not self.started.done():
            self.started.set_exception(exc)
            self.started.exception()  # retrieved: not every fill has a waiting caller
        self._wake()

    def _wake(self) -> None:
        waiting, self._progress = self._progress, asyncio.get_running_loop().create_future()
        waiting.set_result(None)

    def _on_written(self, end: int, future: asyncio.Future[None]) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # the pump sees the error when it awaits this write
        self.written = max(self.written, end)
        self.last_progress = self._clock()
        self._wake()

    async def pump(self, body: ImageBody) -> None:
        """Copy ``body`` into the partial file, then verify size and hash.

        Returns with :attr:`verified` set, or raises (ShortBody, ChecksumMismatch,
        UpstreamError, OSError); the caller owns the clean-up.
        """
        loop = asyncio.get_running_loop()
        hasher = hashlib.new(self.expected[0]) if self.expected else None
        writer = ThreadPoolExecutor(1, thread_name_prefix=f"write-{self.image_id[:8]}")
        hashing = ThreadPoolExecutor(1, thread_name_prefix=f"hash-{self.image_id[:8]}")
        writes: deque[asyncio.Future[None]] = deque()
        hashes: deque[asyncio.Future[None]] = deque()
        offset = 0
        try:
            async for chunk in body.chunks():
                end = offset + len(chunk)
                if end > self.size:
                    raise ShortBody(f"upstream sent more than the image's {self.size} bytes")
                write = loop.run_in_executor(writer, _pwrite_all, self.fd, chunk, offset)
                write.add_done_callback(functools.partial(self._on_written, end))
                writes.append(write)
                if hasher is not None:
                    hashes.append(loop.run_in_executor(hashing, hasher.update, chunk))
                offset = end
                self.last_progress = self._clock()
                await _drain(writes, _MAX_IN_FLIGHT)
                await _drain(hashes, _MAX_IN_FLIGHT)
            await _drain(writes, 0)
            await _drain(hashes, 0)
        finally:
            writer.shutdown(wait=False, cancel_futures=True)
            hashing.shutdown(wait=False, cancel_futures=True)
        if offset != self.size:
            raise ShortBody(f"upstream sent {offset} of the image's {self.size} bytes")
        if hasher is not None and self.expected is not None:
            digest = hasher.hexdigest()
            if digest != self.expected[1]:
                raise ChecksumMismatch(
                    f"{self.expected[0]} of image {self.image_id} is {digest}, "
                    f"Glance recorded {self.expected[1]}"
                )
        self.verified = True
        self.last_progress = self._clock()
        self._wake()


async def _drain(futures: deque[asyncio.Future[None]], keep: int) -> None:
    """Await the oldest futures until at most ``keep`` remain (finished ones too)."""
    while futures and (len(futures) > keep or futures[0].done()):
        await futures.popleft()


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
