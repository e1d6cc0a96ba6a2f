"""One upstream read of one image, written to disk once, read by every caller.

A :class:`Fill` pumps an upstream body into a partial file. Writing and hashing
run in two dedicated threads, side by side (hashlib and ``pwrite`` release the
GIL), so the event loop only moves references. Readers do not get bytes from
the fill: they ``sendfile`` from their own descriptor of the partial file, up to
:meth:`Fill.readable_end`, and sleep on a future that is swapped on every advance.

Integrity rule: the last byte a reader asked for (the image's own, or a range's)
is withheld until the whole body has been verified, so no response can end
cleanly with wrong bytes.

A write the disk refuses (ENOSPC, EIO) ends the fill but not its readers: they
send what is on disk, then relay the rest from upstream themselves, verified
against the hash of the bytes on disk (:meth:`Fill.relay_start`,
docs/behaviour.md#a-full-or-failing-disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from edgecache.core import signature
from edgecache.core.inspection import Inspection, Mode, Verdict
from edgecache.core.intake import Intake
from edgecache.errors import (
    CacheDiskError,
    ChecksumMismatch,
    FillAborted,
    ShortBody,
    UnsafeImage,
    UpstreamError,
)
from edgecache.model import DetachableBody, ImageBody, ImageMeta, ImageSource, RawStream

LOG = logging.getLogger(__name__)

#: Writes (and hash updates) allowed in flight before the pump waits; with
#: upstream reads of up to ~2 MiB this bounds a fill's buffered memory.
_MAX_IN_FLIGHT = 4

#: Hash states kept, one per chunk hashed: the hasher runs at most a few chunks
#: ahead of the writer, so the state at the first failed write is among them.
_HASH_MARKS = 4 * _MAX_IN_FLIGHT

#: Bytes the first callers' headers wait for the format inspector's verdict: most
#: formats are known within 1 MiB (VHDX within 4). Past this, headers go out and a
#: verdict that needs the whole image is made with the hash, before the last byte.
INSPECTION_HOLD = 8 << 20


class Throttle(Protocol):
    """Paces a prefetch's upstream reads (see :mod:`edgecache.ops.prefetch`)."""

    async def take(self, amount: int) -> None:
        """Wait as long as reading ``amount`` more bytes costs under the cap."""
        ...

    def lift(self) -> None:
        """End every wait now and for good: a live caller joined."""
        ...


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
        on_received: Callable[[int], None] | None = None,
        write: Callable[[int, bytes | memoryview, int], None] | None = None,
        inspection: Inspection | None = None,
    ) -> None:
        self.meta = meta
        #: the format inspector the bytes pass through, in the hash thread
        self._inspection = inspection
        #: the verdict that refused the image (enforce mode): the fill fails with it
        self.unsafe: UnsafeImage | None = None
        #: the image signature's verifier (set before the first byte), fed beside the hash;
        #: a bad signature fails the fill when enforced, else it is only recorded
        self.signature: signature.Verifier | None = None
        self.signature_enforced = True
        self.signature_failure: UnsafeImage | None = None
        #: ``write(fd, data, offset)`` puts a chunk on disk (in the writer thread)
        self._write = write or _pwrite_all
        #: set by the first write that failed: the watermark never passes a hole
        self._hole_at: int | None = None
        #: where the disk failed (CacheDiskError): readers relay from upstream past it
        self.disk_failed_at: int | None = None
        #: (offset, hash state of the bytes before it), one per chunk hashed lately
        self._marks: deque[tuple[int, Any]] = deque(maxlen=_HASH_MARKS)
        #: sees every upstream chunk as it arrives, so byte counters move during a long fill
        self._on_received = on_received
        self.image_id = meta.id
        self.size = size
        self.partial = partial
        self.fd = fd
        self.expected = meta.strongest_hash() if verify else None
        self._clock = clock
        self.last_progress = clock()
        #: bytes handed to the writer so far (the offset the next upstream byte goes to)
        self.received = 0
        #: bytes on disk: readers may send up to here (less the last byte, until verified)
        self.written = 0
        self._hasher = hashlib.new(self.expected[0]) if self.expected else None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix=f"write-{self.image_id[:8]}")
        self._hashing = ThreadPoolExecutor(1, thread_name_prefix=f"hash-{self.image_id[:8]}")
        #: the thread reading a detached body (core/intake.py), made on first use
        self._reading: ThreadPoolExecutor | None = None
        #: where the intake's bytes on disk end, and whether the loop has been told
        self._landed_end = 0
        self._landing_queued = False
        #: set in the writer thread when :attr:`fd` is closed (no reader may reopen it then)
        self._fd_closed = False
        self.verified = False
        self.error: BaseException | None = None
        self.stalled = False
        loop = asyncio.get_running_loop()
        #: resolved when upstream answered 200 (callers may send headers), or failed
        self.started: asyncio.Future[None] = loop.create_future()
        self._progress: asyncio.Future[None] = loop.create_future()
        self._loop = loop
        #: resolved once headers may go out: the inspector's verdict (None: not needed,
        #: or not reached within INSPECTION_HOLD bytes), or the fill's end
        self.inspected: asyncio.Future[Verdict | None] = loop.create_future()
        if inspection is None:
            self.inspected.set_result(None)
        self._intake: Intake | None = None
        self.readers = 0
        #: set for a prefetch: reads are paced until a live caller joins (lift_throttle)
        self.throttle: Throttle | None = None
        if inspection is not None and inspection.verdict is not None:
            self._inspected_now()  # decided by the record alone (a disk_format it cannot read)

    # -- the reader's side ----------------------------------------------------------

    def readable_end(self, stop: int | None = None) -> int:
        """How many leading bytes of ``[0, stop)`` readers may send now; raises if the fill
        failed.

        Until the whole image is verified, the last byte of what a reader asked for (the
        image's last byte, or a range's) is withheld: no response ends before the hash
        has spoken.
        """
        if self.error is not None and self.disk_failed_at is None:
            raise FillAborted(f"fill of {self.image_id} failed: {self.error}") from self.error
        stop = self.size if stop is None else min(stop, self.size)
        if self.verified:
            return stop
        return max(0, min(self.written, stop - 1))

    async def wait_readable(
        self, offset: int, stop: int | None = None, *, batch: int = 1, within: float = 0.02
    ) -> int:
        """Wait until bytes past ``offset`` (of ``[0, stop)``) may be sent, or all of them.

        ``batch``: wait for that many bytes (or the rest) when fewer are there,
        for at most ``within`` seconds once some are: fifty readers of one fill
        then send a few large slices each, not one per landed MiB.
        """
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            end = self.readable_end(stop)
            if self.verified and end >= offset:
                return end
            if end > offset:
                last = (self.size if stop is None else min(stop, self.size)) - 1
                if end - offset >= batch or end >= last:
                    return end
                deadline = deadline or loop.time() + within
                if loop.time() >= deadline:
                    return end
            if self.disk_failed_at is not None:
                if end > offset:
                    return end
                assert self.error is not None
                raise CacheDiskError(str(self.error)) from self.error
            # shield: a reader that goes away must not cancel everyone's wake-up
            progress = asyncio.shield(self._progress)
            if deadline is None:
                await progress
            else:
                with contextlib.suppress(TimeoutError):  # not wait_for: see clock.wait
                    async with asyncio.timeout_at(deadline):
                        await progress

    async def wait_started(self) -> None:
        await asyncio.shield(self.started)

    async def wait_inspected(self) -> Verdict | None:
        """Wait until headers may go out; raises :class:`UnsafeImage` if the image is
        refused. None when no verdict is needed yet (it comes with the hash then)."""
        verdict = await asyncio.shield(self.inspected)
        if self.unsafe is not None:
            raise self.unsafe
        return verdict

    @property
    def verdict(self) -> Verdict | None:
        """The format inspector's verdict, once it has one."""
        return self._inspection.verdict if self._inspection is not None else None

    def relay_start(self) -> tuple[int, Any]:
        """Where a reader's own upstream read begins once the disk failed, and the hash
        state of the image's bytes before it (None when nothing is hashed).

        That is where the disk stopped, with the running hash as it was there; if
        that state is no longer known, the image's start with a fresh hash.
        """
        if self.expected is None:
            return self.written, None
        for offset, state in self._marks:
            if offset == self.written:
                return offset, state.copy()
        return 0, hashlib.new(self.expected[0])

    async def open_reader(self) -> int:
        """One reader's own open file description of the partial file (the caller closes it).

        Its own, not a ``dup`` of :attr:`fd`: descriptors of one description share
        the file offset, and asyncio's sendfile fallback (TLS, a file system without
        ``sendfile``) reads at that offset, so two readers would mix their bytes.
        Reopened through ``/proc/self/fd`` (proc(5)), it is the inode being filled
        even after the rename into ``data/`` or an unlink. Opened in the writer
        thread, never on the loop; :meth:`close_fd` queues behind it there, so
        the number cannot be reused under an open.
        """
        loop = asyncio.get_running_loop()
        try:
            opening = loop.run_in_executor(self._writer, self._reopen)
        except RuntimeError as exc:  # the writer is shut down: the fill has ended
            raise FillAborted(f"fill of {self.image_id} has ended") from exc
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_unwanted)
            raise

    def _reopen(self) -> int:
        if self._fd_closed:
            raise FillAborted(f"fill of {self.image_id} has ended")
        return os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)

    def close_fd(self) -> None:
        """Close :attr:`fd` once every reader's open queued before has run (blocking: the
        last close of a big unlinked file frees its blocks; call it in a thread)."""

        def close() -> None:
            self._fd_closed = True
            os.close(self.fd)

        self._writer.submit(close).result()

    # -- the writer's side ----------------------------------------------------------

    def lift_throttle(self) -> None:
        """A live caller joined: read as fast as upstream sends from now on."""
        throttle, self.throttle = self.throttle, None
        if throttle is not None:
            throttle.lift()

    def mark_started(self) -> None:
        if not self.started.done():
            self.started.set_result(None)

    def fail(self, exc: BaseException) -> None:
        """Abort every reader: before headers they answer an error, after it they cut.

        A CacheDiskError instead leaves readers the bytes on disk and the upstream
        for the rest (:meth:`relay_start`).
        """
        if self.error is None and not self.verified:
            self.error = exc
            if isinstance(exc, CacheDiskError):
                self.disk_failed_at = self.written
        if not self.started.done():
            self.started.set_exception(exc)
            self.started.exception()  # retrieved: not every fill has a waiting caller
        if not self.inspected.done():
            self.inspected.set_result(None)
        self._wake()

    def close(self) -> None:
        """Release the writer and hasher threads (once the fill has ended)."""
        self._writer.shutdown(wait=False, cancel_futures=True)
        self._hashing.shutdown(wait=False, cancel_futures=True)
        if self._reading is not None:
            self._reading.shutdown(wait=False, cancel_futures=True)

    def _wake(self) -> None:
        waiting, self._progress = self._progress, asyncio.get_running_loop().create_future()
        waiting.set_result(None)

    def _on_written(self, start: int, end: int, future: asyncio.Future[None]) -> None:
        if future.cancelled() or future.exception() is not None:
            # The pump sees the error when it awaits this write; later writes may
            # still land, but readers must never be handed the hole before them.
            if self._hole_at is None or start < self._hole_at:
                self._hole_at = start
            return
        if self._hole_at is not None and end > self._hole_at:
            return
        self.written = max(self.written, end)
        self.last_progress = self._clock()
        self._wake()

    async def pump(self, body: ImageBody) -> None:
        """Append ``body`` to the partial file, from :attr:`received` on.

        ``body.start`` is the image offset of the body's first byte: a resumed
        body (206) starts where the last one broke off; one that ignored the
        Range (200) starts at 0, and the bytes already received are dropped
        from it, so the file and the running hash stay one continuous stream.
        Returns when the body ends (possibly early: see :attr:`received`);
        raises on a body that breaks (UpstreamError) or overruns the size.
        """
        loop = asyncio.get_running_loop()
        skip = self.received - body.start
        if skip < 0:
            raise ShortBody(f"upstream resumed at {body.start}, expected {self.received}")
        raw = self._detach(body)
        if raw is not None:
            await self._pump_raw(raw, skip)
            return
        writes: deque[asyncio.Future[None]] = deque()
        hashes: deque[asyncio.Future[None]] = deque()
        try:
            async for piece in body.chunks():
                if self._on_received is not None:
                    self._on_received(len(piece))
                chunk = piece
                if skip:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                    if not chunk:
                        continue
                offset = self.received
                end = offset + len(chunk)
                if end > self.size:
                    raise ShortBody(f"upstream sent more than the image's {self.size} bytes")
                write = loop.run_in_executor(self._writer, self._write_at, chunk, offset)
                write.add_done_callback(functools.partial(self._on_written, offset, end))
                writes.append(write)
                if self._digests:
                    hashes.append(loop.run_in_executor(self._hashing, self._hash, chunk, end))
                self.received = end
                self.last_progress = self._clock()
                await _drain(writes, _MAX_IN_FLIGHT)
                await _drain(hashes, _MAX_IN_FLIGHT)
                if self.unsafe is not None:
                    raise self.unsafe
                if self.throttle is not None:
                    # Not reading stops the socket: TCP then paces upstream itself.
                    await self.throttle.take(len(piece))
        finally:
            # The threads run their queues in order, so a later pump's writes
            # and hash updates can only follow these; still, wait for them so a
            # failed write is seen here. The hashes settle even then: a reader's relay
            # takes the hash state where the disk stopped (relay_start).
            try:
                await _settle(writes)
            finally:
                await _settle(hashes)
                # A finished write's callback (_on_written) is only scheduled when it
                # finishes: one turn of the loop, so `written` counts every write that
                # landed before anyone reads it (disk_failed_at).
                await asyncio.sleep(0)

    def _detach(self, body: ImageBody) -> RawStream | None:
        """The body's socket, when this fill may read it in its own thread.

        Not for a paced prefetch (its throttle lives on the loop), nor for bytes
        no hash will check: those keep aiohttp's framing checks.
        """
        if self.throttle is not None or self._hasher is None:
            return None
        if not isinstance(body, DetachableBody):
            return None
        return body.detach()

    async def _pump_raw(self, raw: RawStream, skip: int) -> None:
        """:meth:`pump` for a body read off its socket by an :class:`Intake` thread."""
        loop = asyncio.get_running_loop()
        intake = Intake(
            raw, offset=self.received, skip=skip, limit=self.size,
            write=self._write_at, hash_chunk=self._hash, hashing=self._hashing,
            on_landed=functools.partial(self._landed, loop), on_received=self._on_received,
        )
        if self._reading is None:
            self._reading = ThreadPoolExecutor(1, thread_name_prefix=f"read-{self.image_id[:8]}")
        running = loop.run_in_executor(self._reading, intake.run)
        self._intake = intake
        try:
            await asyncio.shield(running)
        except asyncio.CancelledError:
            intake.stop()
            with contextlib.suppress(Exception):  # the fill is being cancelled anyway
                await asyncio.shield(running)
            raise
        except Exception as exc:
            if self.unsafe is not None:  # stopped by the verdict (_inspected_now)
                raise self.unsafe from exc
            raise
        finally:
            self._intake = None
            self.received = max(self.received, intake.offset)
            self._take_landed()
        if self.unsafe is not None:
            raise self.unsafe

    def _landed(self, loop: asyncio.AbstractEventLoop, end: int) -> None:
        """In the intake thread: bytes up to ``end`` are on disk. One wake-up queued at
        a time: the loop takes the latest end when it gets to it."""
        self._landed_end = end
        if not self._landing_queued:
            self._landing_queued = True
            loop.call_soon_threadsafe(self._take_landed)

    def _take_landed(self) -> None:
        self._landing_queued = False  # before the read: a later end queues a new call
        end = self._landed_end
        if end > self.written:
            self.received = max(self.received, end)
            self.written = end
            self.last_progress = self._clock()
            self._wake()

    def _write_at(self, chunk: bytes | memoryview, offset: int) -> None:
        try:
            self._write(self.fd, chunk, offset)
        except OSError as exc:
            raise CacheDiskError(
                f"writing {len(chunk)} bytes at {offset} of {self.partial}: {exc}"
            ) from exc

    @property
    def _digests(self) -> bool:
        """Whether anything reads the bytes in the hash thread."""
        return (self._hasher is not None or self._inspection is not None
                or self.signature is not None)

    def _hash(self, chunk: bytes | memoryview, end: int) -> None:
        """In the hash thread: the running hash, the signature's verifier, and the
        inspector until it decides."""
        if self._hasher is not None:
            self._hasher.update(chunk)
            self._marks.append((end, self._hasher.copy()))
        if self.signature is not None:
            self.signature.update(chunk)
        inspection = self._inspection
        if inspection is not None and inspection.verdict is None:
            held = inspection.inspected < INSPECTION_HOLD
            if inspection.feed(chunk) is not None or (
                held and inspection.inspected >= INSPECTION_HOLD
            ):
                self._loop.call_soon_threadsafe(self._inspected_now)

    def _inspected_now(self) -> None:
        """On the loop: the inspector decided (or the hold is over). An unsafe image under
        ``enforce`` stops the fill; callers still waiting for headers get the refusal."""
        verdict = self.verdict
        if verdict is not None and not verdict.safe and self.unsafe is None:
            assert self._inspection is not None
            if self._inspection.policy.mode is Mode.ENFORCE:
                self.unsafe = UnsafeImage(self.image_id, verdict.reason or "", verdict.detail)
                if self._intake is not None:
                    self._intake.stop()
        if not self.inspected.done():
            self.inspected.set_result(verdict)

    def verify(self) -> None:
        """All bytes are in: check size and hash, then release the last byte."""
        if self.received != self.size:
            raise ShortBody(f"upstream sent {self.received} of the image's {self.size} bytes")
        if self._hasher is not None and self.expected is not None:
            digest = self._hasher.hexdigest()
            if digest != self.expected[1]:
                raise ChecksumMismatch(
                    f"{self.expected[0]} of image {self.image_id} is {digest}, "
                    f"Glance recorded {self.expected[1]}"
                )
        if self.signature is not None:
            try:
                signature.check(self.image_id, self.signature)
            except UnsafeImage as exc:
                if self.signature_enforced:
                    self.unsafe = self.unsafe or exc
                    raise
                self.signature_failure = exc
        if self._inspection is not None:
            verdict = self._inspection.conclude()  # the hashes have settled: all fed
            self._inspected_now()
            if self.unsafe is not None:
                raise self.unsafe
            if not self.inspected.done():
                self.inspected.set_result(verdict)
        self.verified = True
        self.last_progress = self._clock()
        self._wake()


async def download(
    fill: Fill,
    source: ImageSource,
    headers: Mapping[str, str],
    *,
    max_resumes: int,
    sleep: Callable[[float], Awaitable[None]],
    on_break: Callable[[], None],
) -> None:
    """Pump the image from ``source`` into ``fill``, resuming a body that breaks off, then
    verify it.

    A break (a connection lost mid-body, or a close-delimited body that ends
    early) is resumed with ``Range: bytes=N-`` up to ``max_resumes`` times; the
    readers see one uninterrupted body. ``on_break`` counts each break resumed.
    """
    resumes = 0
    while True:
        try:
            body = await source.open_image(
                fill.image_id, headers, offset=fill.received, meta=fill.meta
            )
        except UpstreamError:
            if not fill.received or resumes >= max_resumes:
                raise
            resumes += 1
            await sleep(min(0.1 * 2 ** resumes, 5.0))
            continue
        try:
            expected = fill.size - body.start
            if body.content_length is not None and body.content_length != expected:
                raise UpstreamError(
                    f"image {fill.image_id}: upstream sends {body.content_length} bytes "
                    f"from offset {body.start}, its record says {expected}",
                    reason="size",
                )
            fill.mark_started()
            await fill.pump(body)
        except UpstreamError as exc:
            if exc.reason != "body" or resumes >= max_resumes:
                raise
            on_break()
            LOG.warning("image %s: upstream body broke off at %d of %d bytes; resuming",
                        fill.image_id, fill.received, fill.size)
            resumes += 1
            continue
        finally:
            body.close()
        if fill.received < fill.size and resumes < max_resumes:
            LOG.warning("image %s: upstream body ended at %d of %d bytes; resuming",
                        fill.image_id, fill.received, fill.size)
            resumes += 1
            continue
        fill.verify()
        return


async def _settle(futures: deque[asyncio.Future[None]]) -> None:
    """Wait for every future; the first error (if any) is raised after all are done."""
    first_error: BaseException | None = None
    while futures:
        try:
            await asyncio.shield(futures.popleft())
        except Exception as exc:
            first_error = first_error or exc
    if first_error is not None:
        raise first_error


async def _drain(futures: deque[asyncio.Future[None]], keep: int) -> None:
    """Await the oldest futures until at most ``keep`` remain (finished ones too)."""
    while futures and (len(futures) > keep or futures[0].done()):
        await futures.popleft()


def _close_unwanted(opening: asyncio.Future[int]) -> None:
    """A reader left while its descriptor was being opened: close it, off the loop."""
    if not opening.cancelled() and opening.exception() is None:
        _ = asyncio.get_running_loop().run_in_executor(None, os.close, opening.result())


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
