"""One fill, driven by an in-memory body: what reaches the file, and what readers may send.

The integrity rule lives here: the last byte is withheld until :meth:`Fill.verify`
passes, and a failed fill makes every reader's next look raise. Bodies are
in-memory :class:`~edgecache.model.ImageBody` fakes, so a break, a resume or an
overrun is exact; time is a :class:`~tests.support.clock.FakeClock`.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import pytest

from edgecache.core.fill import Fill
from edgecache.errors import (
    CacheDiskError,
    ChecksumMismatch,
    FillAborted,
    ShortBody,
    UpstreamError,
)
from edgecache.model import ImageMeta, RawStream
from tests.support.clock import FakeClock, settle

DATA = bytes(range(256)) * 40 + b"tail"  # 10244 bytes, every byte value


class ListBody:
    """An :class:`~edgecache.model.ImageBody` of given pieces; optionally held after some.

    ``hold_after``: after that many pieces the body waits for :meth:`release`, so a
    test can look at the fill mid-body. ``error``: raised after the last piece, as a
    connection that breaks off.
    """

    def __init__(
        self,
        pieces: Sequence[bytes],
        *,
        start: int = 0,
        hold_after: int | None = None,
        error: BaseException | None = None,
    ) -> None:
        self.pieces = list(pieces)
        self.start = start
        self.content_length: int | None = sum(len(p) for p in pieces)
        self.hold_after = hold_after
        self.error = error
        self.held = asyncio.Event()
        self._go = asyncio.Event()
        self.closed = False

    def release(self) -> None:
        self._go.set()

    async def chunks(self) -> AsyncIterator[bytes]:
        for number, piece in enumerate(self.pieces):
            if number == self.hold_after:
                self.held.set()
                await self._go.wait()
            yield piece
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.closed = True


def pieces(data: bytes, size: int = 1000) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def image(data: bytes = DATA, **fields: object) -> ImageMeta:
    record: dict[str, object] = {
        "id": "0f7c3c9e-9d59-4c4b-8a52-0d1b2c3d4e5f",
        "status": "active",
        "size": len(data),
        "checksum": hashlib.md5(data, usedforsecurity=False).hexdigest(),
        "os_hash_algo": "sha512",
        "os_hash_value": hashlib.sha512(data).hexdigest(),
    }
    record.update(fields)
    return ImageMeta.from_glance(record)


class Files:
    """Partial files for fills under ``tmp_path``, closed at the end of the test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fds: list[int] = []
        self.fills: list[Fill] = []

    def fill(self, meta: ImageMeta, *, clock: FakeClock | None = None,
             verify: bool = True,
             write: Callable[[int, bytes | memoryview, int], None] | None = None) -> Fill:
        partial = self.root / f"{meta.id}.{len(self.fds)}"
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self.fds.append(fd)
        fill = Fill(
            meta,
            size=meta.size or 0,
            partial=partial,
            fd=fd,
            verify=verify,
            clock=(clock or FakeClock()).monotonic,
            write=write,
        )
        self.fills.append(fill)
        return fill

    def close(self) -> None:
        for fill in self.fills:
            fill.close()
        for fd in self.fds:
            os.close(fd)


@pytest.fixture
def files(tmp_path: Path) -> Iterator[Files]:
    made = Files(tmp_path)
    try:
        yield made
    finally:
        made.close()


class RecordingThrottle:
    """A :class:`~edgecache.core.fill.Throttle` that lets everything through and says so."""

    def __init__(self) -> None:
        self.taken: list[int] = []
        self.lifted = 0

    async def take(self, amount: int) -> None:
        self.taken.append(amount)

    def lift(self) -> None:
        self.lifted += 1


# -- pumping ------------------------------------------------------------------------


async def test_pumping_writes_the_file_and_advances_written(files: Files) -> None:
    fill = files.fill(image())
    await fill.pump(ListBody(pieces(DATA)))
    await settle()  # a write's completion callback may still be queued when pump returns
    assert (fill.received, fill.written) == (len(DATA), len(DATA))
    assert fill.partial.read_bytes() == DATA


async def test_progress_is_stamped_with_the_injected_clock(files: Files) -> None:
    """The stall rule reads these stamps: they must come from the fill's clock."""
    clock = FakeClock()
    fill = files.fill(image(), clock=clock)
    assert fill.last_progress == clock.monotonic()
    await clock.advance(30)
    await fill.pump(ListBody(pieces(DATA)))
    assert fill.last_progress == clock.monotonic()
    await clock.advance(5)
    fill.verify()
    assert fill.last_progress == clock.monotonic()


async def test_every_upstream_piece_is_reported_as_it_arrives(tmp_path: Path) -> None:
    seen: list[int] = []
    partial = tmp_path / "p"
    fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o600)
    fill = Fill(image(), size=len(DATA), partial=partial, fd=fd, on_received=seen.append)
    try:
        await fill.pump(ListBody(pieces(DATA, 4000)))
    finally:
        fill.close()
        os.close(fd)
    assert seen == [4000, 4000, len(DATA) - 8000]


async def test_a_body_that_breaks_off_keeps_what_was_written(files: Files) -> None:
    fill = files.fill(image())
    half = DATA[:5000]
    with pytest.raises(UpstreamError):
        await fill.pump(ListBody(pieces(half), error=UpstreamError("cut", reason="body")))
    await settle()
    assert (fill.received, fill.written) == (5000, 5000)
    assert fill.partial.read_bytes() == half


async def test_a_resumed_body_continues_the_file_and_the_hash(files: Files) -> None:
    fill = files.fill(image())
    await fill.pump(ListBody(pieces(DATA[:3333])))
    await fill.pump(ListBody(pieces(DATA[3333:]), start=3333))
    fill.verify()
    assert fill.partial.read_bytes() == DATA
    assert fill.readable_end() == len(DATA)


async def test_a_200_after_a_resume_drops_the_bytes_already_received(files: Files) -> None:
    """Upstream ignored the Range and sent the image from 0: the head is skipped, once."""
    fill = files.fill(image())
    await fill.pump(ListBody(pieces(DATA[:2500])))
    await fill.pump(ListBody(pieces(DATA, 700), start=0))
    fill.verify()  # the running hash saw each byte exactly once
    assert fill.partial.read_bytes() == DATA


async def test_a_resume_that_starts_past_the_received_bytes_is_refused(files: Files) -> None:
    fill = files.fill(image())
    await fill.pump(ListBody([DATA[:100]]))
    with pytest.raises(ShortBody, match="resumed at 200"):
        await fill.pump(ListBody([DATA[200:]], start=200))
    assert fill.received == 100


async def test_a_body_longer_than_the_image_is_a_short_body(files: Files) -> None:
    fill = files.fill(image())
    with pytest.raises(ShortBody, match="more than"):
        await fill.pump(ListBody(pieces(DATA + b"extra")))
    assert fill.received <= len(DATA)
    assert fill.partial.stat().st_size <= len(DATA)


# -- verifying ----------------------------------------------------------------------


async def test_a_failed_write_leaves_no_hole_for_readers(files: Files) -> None:
    """The second chunk's write fails (a disk error); the third, queued behind it, lands:
    the watermark stops before the failed chunk and the pump fails."""
    def write(fd: int, data: bytes | memoryview, offset: int) -> None:
        if offset == 1000:
            raise OSError(errno.EIO, "Input/output error")
        os.pwrite(fd, data, offset)

    fill = files.fill(image(), write=write)
    with pytest.raises(CacheDiskError):
        await fill.pump(ListBody(pieces(DATA)))
    await settle()
    assert fill.written == 1000
    assert fill.readable_end() <= 1000


async def test_a_disk_failure_leaves_readers_the_bytes_on_disk_and_the_hash_of_them(
    files: Files,
) -> None:
    """The disk refuses the write at 5000: readers may still send the 5000 bytes on disk,
    then are told to relay, from 5000 on, with the hash state of those 5000 bytes."""
    def write(fd: int, data: bytes | memoryview, offset: int) -> None:
        if offset >= 5000:
            raise OSError(errno.ENOSPC, "No space left on device")
        os.pwrite(fd, data, offset)

    fill = files.fill(image(), write=write)
    with pytest.raises(CacheDiskError) as failed:
        await fill.pump(ListBody(pieces(DATA)))
    fill.fail(failed.value)
    assert fill.readable_end() == 5000
    assert await fill.wait_readable(1000) == 5000
    with pytest.raises(CacheDiskError):
        await fill.wait_readable(5000)
    offset, state = fill.relay_start()
    assert offset == 5000
    assert state.hexdigest() == hashlib.sha512(DATA[:5000]).hexdigest()
    assert fill.relay_start()[1] is not state  # each reader hashes on its own copy


async def test_the_last_byte_is_withheld_until_verified(files: Files) -> None:
    fill = files.fill(image())
    assert fill.readable_end() == 0
    await fill.pump(ListBody(pieces(DATA)))
    await settle()
    assert fill.readable_end() == len(DATA) - 1
    fill.verify()
    assert fill.verified
    assert fill.readable_end() == len(DATA)


async def test_a_ranges_last_byte_is_withheld_until_the_image_is_verified(
    files: Files,
) -> None:
    """A range that ends before the image does must not complete on unverified bytes."""
    fill = files.fill(image())
    await fill.pump(ListBody(pieces(DATA)))
    await settle()
    assert fill.readable_end(100) == 99
    reader = asyncio.ensure_future(fill.wait_readable(99, 100))
    await settle()
    assert not reader.done(), "the range's last byte waits for the hash"
    fill.verify()
    assert await reader == 100
    assert fill.readable_end(100) == 100


async def test_wrong_bytes_fail_verification_and_abort_readers(files: Files) -> None:
    wrong = DATA[:100] + bytes([DATA[100] ^ 1]) + DATA[101:]
    fill = files.fill(image())
    await fill.pump(ListBody(pieces(wrong)))
    await settle()
    with pytest.raises(ChecksumMismatch) as raised:
        fill.verify()
    assert fill.readable_end() == len(DATA) - 1  # still withheld: nobody got the end
    fill.fail(raised.value)  # what the cache does with any verification error
    with pytest.raises(FillAborted):
        fill.readable_end()
    assert not fill.verified


async def test_too_few_bytes_fail_verification_and_abort_readers(files: Files) -> None:
    fill = files.fill(image())
    await fill.pump(ListBody(pieces(DATA[:-1])))
    with pytest.raises(ShortBody) as raised:
        fill.verify()
    fill.fail(raised.value)
    with pytest.raises(FillAborted, match="failed"):
        fill.readable_end()


async def test_the_md5_is_checked_when_no_os_hash_is_recorded(files: Files) -> None:
    fill = files.fill(image(os_hash_value=None, checksum=hashlib.md5(b"other").hexdigest()))
    await fill.pump(ListBody([DATA]))
    with pytest.raises(ChecksumMismatch, match="md5"):
        fill.verify()


async def test_without_verification_only_the_size_counts(files: Files) -> None:
    fill = files.fill(image(os_hash_value="00", checksum="00"), verify=False)
    await fill.pump(ListBody([DATA]))
    fill.verify()
    assert fill.readable_end() == len(DATA)


async def test_a_failure_after_verification_does_not_abort_readers(files: Files) -> None:
    """The image is whole; a late error (say, the commit) must not cut its readers."""
    fill = files.fill(image())
    await fill.pump(ListBody([DATA]))
    fill.verify()
    fill.fail(OSError("commit failed"))
    assert fill.readable_end() == len(DATA)


# -- readers ------------------------------------------------------------------------


async def test_wait_readable_wakes_readers_as_bytes_land(files: Files) -> None:
    fill = files.fill(image())
    body = ListBody(pieces(DATA), hold_after=2)
    readers = [asyncio.create_task(fill.wait_readable(0)) for _ in range(3)]
    pump = asyncio.create_task(fill.pump(body))
    async with asyncio.timeout(10):
        ends = await asyncio.gather(*readers)
        await body.held.wait()
    assert all(0 < end <= 2000 for end in ends)
    late = asyncio.create_task(fill.wait_readable(2000))
    await asyncio.sleep(0)
    assert not late.done()  # nothing new to send while the body is held
    body.release()
    async with asyncio.timeout(10):
        await pump
        assert await late > 2000
        fill.verify()
        assert await fill.wait_readable(len(DATA) - 1) == len(DATA)
        assert await fill.wait_readable(len(DATA)) == len(DATA)


async def test_a_waiting_reader_sees_the_failure(files: Files) -> None:
    fill = files.fill(image())
    reader = asyncio.create_task(fill.wait_readable(0))
    await asyncio.sleep(0)
    fill.fail(UpstreamError("gone"))
    async with asyncio.timeout(10):
        with pytest.raises(FillAborted):
            await reader


async def test_a_reader_going_away_does_not_strand_the_others(files: Files) -> None:
    fill = files.fill(image())
    leaving = asyncio.create_task(fill.wait_readable(0))
    staying = asyncio.create_task(fill.wait_readable(0))
    await asyncio.sleep(0)
    leaving.cancel()
    await fill.pump(ListBody([DATA[:10]]))
    async with asyncio.timeout(10):
        assert await staying == 10
    assert leaving.cancelled()


async def test_open_reader_is_a_private_descriptor_of_the_partial(files: Files) -> None:
    fill = files.fill(image())
    await fill.pump(ListBody([DATA]))
    fd = await fill.open_reader()
    try:
        assert fd != fill.fd
        assert os.pread(fd, 10, 0) == DATA[:10]
    finally:
        os.close(fd)


async def test_each_reader_has_its_own_file_offset(files: Files) -> None:
    """Not a dup: asyncio's sendfile fallback reads at the description's offset."""
    fill = files.fill(image())
    await fill.pump(ListBody([DATA]))
    first, second = await fill.open_reader(), await fill.open_reader()
    try:
        os.lseek(first, 10, os.SEEK_SET)
        assert os.read(second, 5) == DATA[:5]
        assert os.read(first, 5) == DATA[10:15]
    finally:
        os.close(first)
        os.close(second)


async def test_no_reader_opens_the_partial_once_its_descriptor_is_closed(files: Files) -> None:
    """The number may belong to another file by then."""
    fill = files.fill(image())
    await asyncio.to_thread(fill.close_fd)
    files.fds.remove(fill.fd)
    with pytest.raises(FillAborted):
        await fill.open_reader()
    fill.close()
    with pytest.raises(FillAborted):
        await fill.open_reader()


# -- starting and failing -----------------------------------------------------------


async def test_fail_before_start_resolves_started_with_the_exception(files: Files) -> None:
    fill = files.fill(image())
    error = UpstreamError("no Glance answered")
    fill.fail(error)
    assert fill.started.done()
    assert fill.started.exception() is error
    with pytest.raises(UpstreamError) as raised:
        await fill.wait_started()
    assert raised.value is error
    assert fill.error is error


async def test_fail_after_start_keeps_started_and_records_the_error(files: Files) -> None:
    fill = files.fill(image())
    fill.mark_started()
    fill.mark_started()  # idempotent: every resume marks it again
    fill.fail(ShortBody("cut"))
    await fill.wait_started()
    assert isinstance(fill.error, ShortBody)
    fill.fail(UpstreamError("later"))  # the first error is the one readers see
    assert isinstance(fill.error, ShortBody)


# -- throttling ---------------------------------------------------------------------


async def test_a_throttled_fill_takes_each_piece_until_lifted(files: Files) -> None:
    fill = files.fill(image())
    throttle = RecordingThrottle()
    fill.throttle = throttle
    await fill.pump(ListBody(pieces(DATA[:3000])))
    assert throttle.taken == [1000, 1000, 1000]
    fill.lift_throttle()
    assert throttle.lifted == 1
    assert fill.throttle is None
    await fill.pump(ListBody(pieces(DATA[3000:]), start=3000))
    assert throttle.taken == [1000, 1000, 1000]  # a live caller joined: no more pacing
    fill.lift_throttle()
    assert throttle.lifted == 1



class SocketBody(ListBody):
    """A body whose bytes come off a socket pair (as a detached HTTP body's would)."""

    def __init__(self, head: bytes, size: int) -> None:
        super().__init__([head])
        self.content_length = size
        self.sender, self.receiver = socket.socketpair()
        self.receiver.setblocking(False)
        self.head = head

    def detach(self) -> RawStream:
        return RawStream(self.receiver, self.head, (self.content_length or 0) - len(self.head))


async def test_a_detached_body_is_read_in_a_thread_and_readers_see_it_land(
    files: Files,
) -> None:
    fill = files.fill(image())
    body = SocketBody(DATA[:100], len(DATA))
    pumping = asyncio.create_task(fill.pump(body))
    end = await asyncio.wait_for(fill.wait_readable(0), 5)
    assert end == 100  # the head, already in: the loop was told where the disk ends
    await asyncio.to_thread(body.sender.sendall, DATA[100:])
    await asyncio.wait_for(pumping, 5)
    fill.verify()
    assert fill.readable_end() == len(DATA)
    assert os.pread(fill.fd, len(DATA) + 1, 0) == DATA
    body.sender.close()


async def test_cancelling_a_pump_stops_its_intake_thread(files: Files) -> None:
    fill = files.fill(image())
    body = SocketBody(DATA[:100], len(DATA))
    pumping = asyncio.create_task(fill.pump(body))
    await asyncio.wait_for(fill.wait_readable(0), 5)

    pumping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(pumping, 5)

    assert fill.written == 100
    assert body.receiver.fileno() == -1  # the intake closed its socket and ended
    body.sender.close()
