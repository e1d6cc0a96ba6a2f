"""The image cache: hit, join a fill, or start one; admission, eviction, housekeeping.

:class:`ImageCache` owns the index, the fills in progress, the space reserved for
them and the disk store; nothing outside this package reaches into them. Others
read it through a small read model (:meth:`~ImageCache.usage`,
:meth:`~ImageCache.entries`, :meth:`~ImageCache.fills`, :meth:`~ImageCache.copy_of`,
:meth:`~ImageCache.fill_state`) and change it through commands (evict, prune,
pin, mark verified, discard corrupt, cancel a prefetch).

A fill belongs to the cache, not to the request that started it: it runs as its
own task, and a caller that disconnects does not cancel it. A fill whose bytes
are wrong (a hash mismatch, a body shorter or longer than the record)
puts its image in a short cool-down: the next callers are told to come back
rather than each starting another download of the same bad bytes.

A full or failing disk is not the image's fault and never a caller's failure
(docs/behaviour.md#a-full-or-failing-disk): admission keeps fills within the file
system's free space as well as ``max_size``; a partial that cannot be created
means "pass through"; a write that fails leaves the fill's readers to relay the
rest from upstream (:meth:`ImageCache.relay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import os
from collections.abc import AsyncGenerator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from edgecache import metrics as m
from edgecache.clock import SYSTEM, Clock
from edgecache.core import policy
from edgecache.core.diskstore import DiskStore
from edgecache.core.fill import Fill, Throttle, download
from edgecache.core.index import Index
from edgecache.core.inspection import Inspection, Mode, SafetyPolicy
from edgecache.core.relay import relay
from edgecache.core.signature import SIGNATURE_REASONS, SignatureCheck
from edgecache.core.views import (
    DETECTED_FORMAT,
    DISK_FORMAT,
    VERIFIED_AT,
    Cooldown,
    Copy,
    FillProgress,
    FillState,
    Hit,
    Rejection,
    Usage,
)
from edgecache.errors import (
    CacheDiskError,
    CertificateRefused,
    FillAborted,
    FillCoolingDown,
    FillStalled,
    NoSpace,
    UnsafeImage,
    UpstreamError,
    UpstreamRefused,
)
from edgecache.model import Entry, ImageMeta, ImageSource, same_bytes

LOG = logging.getLogger(__name__)

#: Threads for the cache's blocking file calls (open, fstat, close, fsync, rename,
#: unlink, the index): the loop never makes them, and they never wait behind
#: the loop's default pool (DNS look-ups, sendfile's fallback reads).
DISK_THREADS = 16
#: Refused images remembered (each a record): enough for any site's unsafe uploads
MAX_REJECTIONS = 1024

_T = TypeVar("_T")


class ImageCache:
    """Committed images plus fills in progress, within ``max_size`` bytes."""

    def __init__(
        self,
        store: DiskStore,
        source: ImageSource,
        *,
        max_size: int,
        stall_time: float = 86400.0,
        verify: bool = True,
        max_resume_attempts: int = 5,
        failure_cooldown: float = 30.0,
        metrics: m.Metrics | None = None,
        clock: Clock = SYSTEM,
        write: Callable[[int, bytes | memoryview, int], None] | None = None,
        safety: SafetyPolicy | None = None,
        signatures: SignatureCheck | None = None,
    ) -> None:
        self._store = store
        self._source = source
        self._max_size = max_size
        self._stall_time = stall_time
        self._verify = verify
        self._max_resume_attempts = max_resume_attempts
        self._failure_cooldown = failure_cooldown
        self._metrics = metrics or m.Metrics()
        self._clock = clock
        self._index = Index()
        self._fills: dict[str, Fill] = {}
        self._fill_tasks: dict[str, asyncio.Task[None]] = {}
        self._reserved = 0
        #: images whose last fill failed for upstream's reasons, until their cool-down ends
        self._cooling: dict[str, Cooldown] = {}
        #: ``[image_safety]``: the daemon passes the operator's (enforce by default)
        self._safety = safety or SafetyPolicy(Mode.OFF)
        #: ``[image_safety] verify_signatures``: each fill's signature verifier, or None
        self._signatures = signatures
        #: images the format inspector refused, oldest first (at most MAX_REJECTIONS)
        self._rejected: dict[str, Rejection] = {}
        self._dirty: set[str] = set()
        self._housekeeping: asyncio.Task[None] | None = None
        #: background removals of evicted files, by image (a commit of the same id waits)
        self._removals: dict[str, asyncio.Task[None]] = {}
        #: set while no demand fill runs (see demand_fills): prefetches wait on it
        self._demand_idle = asyncio.Event()
        self._demand_idle.set()
        #: how fills put a chunk on disk, ``write(fd, data, offset)`` (None: pwrite); a
        #: fault seam, as a failing disk cannot be had on demand
        self.write = write
        #: the file system's free bytes at the last statvfs (None: not known yet), and
        #: what fills had written by then (see _disk_room)
        self._disk_free: int | None = None
        self._written_at_sample = 0
        #: bytes written by fills that have ended (with those of running fills: the total)
        self._written_by_ended = 0
        self._sampling: asyncio.Task[None] | None = None
        self._resample = False
        self._disk = ThreadPoolExecutor(DISK_THREADS, thread_name_prefix="cache-disk")
        #: images whose partial file is being created, so a second caller waits and joins
        self._starting: dict[str, asyncio.Future[None]] = {}

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, reconcile the index with the disk, start housekeeping."""
        entries = await self._in_disk(self._store.open)
        self._index.load(entries)
        LOG.info(
            "cache at %s: %d images, %d bytes (max %d)",
            self._store.root, len(self._index), self._index.total_bytes, self._max_size,
        )
        await self.prune()
        await self.sample_disk()
        self._publish()
        self._housekeeping = asyncio.create_task(self._housekeeping_loop())

    async def stop(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        for image_id, task in list(self._fill_tasks.items()):
            fill = self._fills.get(image_id)
            if fill is None or not fill.verified:
                task.cancel()  # a verified fill is only committing: let it finish
        for task in list(self._fill_tasks.values()) + list(self._removals.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._sampling is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sampling
        await self._flush_dirty()
        await self._in_disk(self._store.close)
        self._disk.shutdown(wait=False)

    # -- blocking file calls, in the disk threads ---------------------------------------

    def _in_disk(self, call: Callable[..., _T], *args: object) -> asyncio.Future[_T]:
        return asyncio.get_running_loop().run_in_executor(self._disk, call, *args)

    async def close_fd(self, fd: int) -> None:
        """Close a descriptor the cache handed out, in a disk thread.

        The last close of an evicted or failed multi-GiB file frees its blocks,
        which can take hundreds of ms. Shielded: a caller cancelled meanwhile
        still has its descriptor closed.
        """
        try:
            closing = self._in_disk(os.close, fd)
        except RuntimeError:  # the cache has stopped: no thread to hand it to
            os.close(fd)
            return
        await asyncio.shield(closing)

    def release_fd(self, fd: int) -> None:
        """Queue the close of a descriptor in a disk thread, without waiting for it.

        For a response whose last byte is out: an await there would give a
        client that hangs up at once the chance to cancel a finished response.
        """
        try:
            self._disk.submit(os.close, fd)
        except RuntimeError:  # the cache has stopped
            os.close(fd)

    # -- the read model -----------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._store.root

    @property
    def max_size(self) -> int:
        return self._max_size

    def usage(self) -> Usage:
        return Usage(
            size=self._index.total_bytes,
            reserved=self._reserved,
            max_size=self._max_size,
            pinned=self._pinned_bytes(),
            images=len(self._index),
            fills=len(self._fills),
        )

    def entries(self) -> list[Entry]:
        """Copies of the committed entries, least recently used first."""
        return [_copy(entry) for entry in self._index.lru_order()]

    def entry(self, image_id: str) -> Entry | None:
        """A copy of the committed entry of ``image_id``, if any."""
        entry = self._index.get(image_id)
        return None if entry is None else _copy(entry)

    def is_committed(self, image_id: str) -> bool:
        return image_id in self._index

    def holds(self, image_id: str) -> bool:
        """Whether the image is committed or being fetched."""
        return image_id in self._index or image_id in self._fills

    def copy_of(self, meta: ImageMeta) -> Copy:
        """What is committed of the bytes ``meta`` describes (no side effects)."""
        entry = self._index.get(meta.id)
        if entry is None:
            return Copy.ABSENT
        return Copy.SAME if same_bytes(entry, meta) else Copy.CHANGED

    def fill_state(self, meta: ImageMeta) -> FillState:
        fill = self._fills.get(meta.id)
        if fill is None or fill.error is not None:
            return FillState.NONE
        if not same_bytes(fill.meta, meta):
            return FillState.OTHER
        return FillState.VERIFIED if fill.verified else FillState.RUNNING

    def running_fill(self, image_id: str) -> Fill | None:
        """The image's fill in progress (its reader side: watermark, verified), if any."""
        return self._fills.get(image_id)

    def fills(self) -> list[FillProgress]:
        return [_progress(fill) for fill in list(self._fills.values())]

    def fill_progress(self, image_id: str) -> FillProgress | None:
        fill = self._fills.get(image_id)
        return None if fill is None else _progress(fill)

    def cooldown(self, meta: ImageMeta) -> Cooldown | None:
        """The cool-down of a failed fill of exactly these bytes, while it lasts."""
        cooling = self._cooling.get(meta.id)
        if cooling is None:
            return None
        if self._clock.monotonic() >= cooling.until or not same_bytes(cooling.meta, meta):
            del self._cooling[meta.id]
            return None
        return cooling

    def rejection(self, meta: ImageMeta) -> Rejection | None:
        """The refusal of exactly these bytes (and, for a signature's, this signature)."""
        rejected = self._rejected.get(meta.id)
        if rejected is None or not same_bytes(rejected.meta, meta):
            return None
        if rejected.reason in SIGNATURE_REASONS and rejected.meta.signature != meta.signature:
            return None  # signed again, or pointed at another certificate: check afresh
        return rejected

    def rejections(self) -> list[Rejection]:
        """Every image refused as unsafe lately, oldest first (the cache API lists them)."""
        return list(self._rejected.values())

    def can_admit(self, size: int | None) -> bool:
        """Whether a fill of ``size`` bytes could start now (evicting what it must), within
        ``max_size`` and the file system's free space."""
        return size is not None and self._victims_for(size) is not None

    # -- the file system's free space ----------------------------------------------------

    async def sample_disk(self) -> None:
        """Read the cache file system's free space (statvfs, in a thread: NFS may block)."""
        written = self._written_total()
        try:
            st = await self._in_disk(os.statvfs, self._store.root)
        except OSError as exc:
            LOG.warning("cannot read the free space of %s: %s", self._store.root, exc)
            return
        read_only = bool(st.f_flag & os.ST_RDONLY)
        self._disk_free = 0 if read_only else st.f_bavail * st.f_frsize
        self._written_at_sample = written

    def _sample_disk_soon(self) -> None:
        """Sample again in the background (once more if a sample is under way: it may
        have read the disk before what changed it)."""
        self._resample = True
        if self._sampling is None or self._sampling.done():
            self._sampling = asyncio.create_task(self._sample_while_asked())

    async def _sample_while_asked(self) -> None:
        while self._resample:
            self._resample = False
            await self.sample_disk()

    def _written_total(self) -> int:
        return self._written_by_ended + sum(fill.written for fill in self._fills.values())

    def _disk_room(self) -> int | None:
        """Bytes a new fill may still take on disk: the free space sampled, less what fills
        wrote since and what running fills will still write (None: not known).

        Freed space counts only from the next sample, and others' writes may take
        some meanwhile: a fill that meets a full disk anyway relays (see relay).
        """
        if self._disk_free is None:
            return None
        written_since = self._written_total() - self._written_at_sample
        to_write = sum(fill.size - fill.written for fill in self._fills.values())
        return self._disk_free - written_since - to_write

    async def probe_write(self) -> str | None:
        """Why no file can be created in the cache directory now, or None."""
        return await self._in_disk(self._store.probe_write)

    # -- hits ---------------------------------------------------------------------------

    def committed(self, meta: ImageMeta) -> Entry | None:
        """The committed entry holding exactly the bytes ``meta`` describes.

        An entry whose image changed upstream (size or hash) is evicted: it must
        be refetched, never served.
        """
        copy = self.copy_of(meta)
        if copy is Copy.CHANGED:
            LOG.info("image %s changed upstream; evicting the cached copy", meta.id)
            self.evict_soon(meta.id)
        return self._index.get(meta.id) if copy is Copy.SAME else None

    async def open_hit(self, meta: ImageMeta) -> Hit | None:
        """Open the committed copy of ``meta``'s bytes and count the access; None if gone.

        The caller closes :attr:`Hit.fd` with :meth:`close_fd`.
        """
        entry = self._index.get(meta.id)
        if entry is None or not same_bytes(entry, meta):
            return None
        opened = await self._open_data(entry)
        if opened is None:
            return None
        fd, on_disk = opened
        if on_disk != entry.size:  # truncated or grown under us: never serve it
            await self.close_fd(fd)
            self.report_damaged(entry, f"{on_disk} bytes on disk, {entry.size} recorded")
            return None
        if self._index.get(entry.image_id) is entry:  # not evicted while it was opened
            self._index.touch(entry.image_id, self._clock.time())
            self._dirty.add(entry.image_id)
        return Hit(_copy(entry), fd)

    async def open_committed(self, image_id: str) -> Hit | None:
        """Open a committed image to re-read it (the scrubber); not an access.

        The caller closes :attr:`Hit.fd` with :meth:`close_fd`.
        """
        entry = self._index.get(image_id)
        if entry is None:
            return None
        opened = await self._open_data(entry)
        return None if opened is None else Hit(_copy(entry), opened[0])

    async def _open_data(self, entry: Entry) -> tuple[int, int] | None:
        """``(fd, size on disk)`` of the entry's file, opened in a disk thread."""
        opening = self._in_disk(_open_sized, self._store.data_path(entry.image_id))
        try:
            return await asyncio.shield(opening)
        except FileNotFoundError:
            if self._index.get(entry.image_id) is entry:
                LOG.warning("image %s: its committed file is gone; dropping the entry",
                            entry.image_id)
                self._index.remove(entry.image_id)
                self._publish()
            return None
        except asyncio.CancelledError:
            opening.add_done_callback(self._close_unwanted)
            raise

    def _close_unwanted(self, opening: asyncio.Future[tuple[int, int]]) -> None:
        """The caller left while its file was being opened: close it in a disk thread."""
        if not opening.cancelled() and opening.exception() is None:
            self._disk.submit(os.close, opening.result()[0])

    # -- fairness: demand fills before prefetch fills ------------------------------------

    @property
    def demand_fills(self) -> int:
        """Fills running for a live caller (started by one, or a prefetch one joined)."""
        return sum(1 for fill in self._fills.values() if fill.throttle is None)

    def _demand_changed(self) -> None:
        if self.demand_fills:
            self._demand_idle.clear()
        else:
            self._demand_idle.set()

    async def demand_idle(self) -> None:
        """Wait until no demand fill runs (prefetches start only then)."""
        await self._demand_idle.wait()

    # -- fills --------------------------------------------------------------------------

    def fill_in_progress(self, meta: ImageMeta) -> Fill | None:
        """The running fill of exactly the bytes ``meta`` describes, if any (joined as is).

        A live caller joining a prefetch's fill lifts its throttle.
        """
        if self.fill_state(meta) in (FillState.NONE, FillState.OTHER):
            return None
        fill = self._fills[meta.id]
        fill.lift_throttle()
        self._demand_changed()
        return fill

    async def fill_for(
        self, meta: ImageMeta, headers: Mapping[str, str], *, throttle: Throttle | None = None,
        project_id: str | None = None,
    ) -> tuple[Fill, bool] | None:
        """Join the fill of exactly these bytes, or start one. ``(fill, started_now)``.

        ``headers`` authenticate the fill's calls to Glance; ``project_id`` is the
        project of their token, for the key manager (signed images).

        ``throttle`` marks a prefetch: a fill it starts reads at the prefetch rate
        until a live caller (no throttle) joins, which lifts the cap for good.
        Returns None when the image cannot be cached: its size is unknown, it
        does not fit within ``max_size`` even after evicting everything
        evictable, or a fill of other bytes of the same image is running.
        Raises FillCoolingDown while a failed fill of these bytes cools down.

        The partial file is created in a disk thread; a caller that comes
        meanwhile waits for it and joins the fill it starts.
        """
        while (starting := self._starting.get(meta.id)) is not None:
            await asyncio.shield(starting)
        state = self.fill_state(meta)
        if state is FillState.OTHER:
            return None
        if state is not FillState.NONE:
            fill = self._fills[meta.id]
            if throttle is None:
                fill.lift_throttle()
                self._demand_changed()
            return fill, False
        rejected = self.rejection(meta)
        if rejected is not None:
            raise UnsafeImage(meta.id, rejected.reason, rejected.detail)
        cooling = self.cooldown(meta)
        if cooling is not None:
            raise FillCoolingDown(
                f"image {meta.id}: its last fill failed ({cooling.reason}); not fetching it "
                f"again for {cooling.retry_after(self._clock.monotonic()):.0f} s",
                retry_after=cooling.retry_after(self._clock.monotonic()),
            )
        size = meta.size
        if size is None:
            return None
        victims = self._victims_for(size)
        if victims is None:
            LOG.warning("image %s (%d bytes) cannot fit in the cache; not caching it",
                        meta.id, size)
            return None
        # The partial first: a disk that cannot take it must not cost an eviction.
        starting = self._starting[meta.id] = asyncio.get_running_loop().create_future()
        try:
            partial, fd = await self._create_partial(meta.id)
        except OSError as exc:
            self._metrics.disk_errors.labels(op="create").inc()
            LOG.warning("image %s: cannot create its partial file (%s); passing it through",
                        meta.id, exc)
            self._sample_disk_soon()  # a read-only remount shows in statvfs
            return None
        finally:
            del self._starting[meta.id]
            starting.set_result(None)
        victims = self._victims_for(size)  # again: the loop ran while the file was created
        if victims is None:
            await self._in_disk(_discard_created, self._store, partial, fd)
            LOG.warning("image %s (%d bytes) cannot fit in the cache; not caching it",
                        meta.id, size)
            return None
        for victim in victims:
            self._evict_now(victim.image_id)
        inspection = (
            Inspection(meta.id, meta.disk_format, self._safety) if self._safety.inspects
            else None
        )
        fill = Fill(meta, size=size, partial=partial, fd=fd, verify=self._verify,
                    clock=self._clock.monotonic,
                    on_received=self._metrics.upstream_fetched_bytes.inc, write=self.write,
                    inspection=inspection)
        fill.throttle = throttle
        self._reserved += size
        self._fills[meta.id] = fill
        task = asyncio.create_task(
            self._run_fill(fill, dict(headers), project_id), name=f"fill-{meta.id}"
        )
        self._fill_tasks[meta.id] = task
        self._demand_changed()
        self._publish()
        return fill, True

    async def _create_partial(self, image_id: str) -> tuple[Path, int]:
        creating = self._in_disk(self._store.create_partial, image_id)
        try:
            return await asyncio.shield(creating)
        except asyncio.CancelledError:  # the caller left: the file must not stay behind
            creating.add_done_callback(self._discard_unwanted)
            raise

    def _discard_unwanted(self, creating: asyncio.Future[tuple[Path, int]]) -> None:
        if not creating.cancelled() and creating.exception() is None:
            self._disk.submit(_discard_created, self._store, *creating.result())

    def _victims_for(self, size: int) -> list[Entry] | None:
        lru = list(self._index.lru_order())
        used, reserved = self._index.total_bytes, self._reserved
        victims = policy.victims_for(size, lru=lru, used=used, reserved=reserved,
                                     max_size=self._max_size, disk_room=self._disk_room())
        if victims is None:
            within_max_size = policy.victims_for(size, lru=lru, used=used, reserved=reserved,
                                                 max_size=self._max_size)
            reason = "max_size" if within_max_size is None else "disk_space"
            self._metrics.admissions_refused.labels(reason=reason).inc()
            if reason == "disk_space":
                LOG.warning("an image of %d bytes would not fit in the free space of %s "
                            "(about %d bytes left for fills); not caching it",
                            size, self._store.root, self._disk_room() or 0)
        return victims

    async def _run_fill(
        self, fill: Fill, headers: dict[str, str], project_id: str | None
    ) -> None:
        started = self._clock.monotonic()
        self._metrics.fills_in_progress.inc()
        committed = False
        try:
            if self._signatures is not None:
                await self._arm_signature(fill, headers, project_id)
            await download(
                fill, self._source, headers,
                max_resumes=self._max_resume_attempts,
                sleep=self._clock.sleep,
                on_break=self._metrics.upstream_errors.labels(reason="body").inc,
            )
            entry = Entry.from_meta(fill.meta, size=fill.size, now=self._clock.time())
            verdict = fill.verdict
            if verdict is not None:
                entry.extra[DISK_FORMAT] = fill.meta.disk_format
                if verdict.detected is not None:
                    entry.extra[DETECTED_FORMAT] = verdict.detected
                if not verdict.safe:  # [image_safety] mode = log: served, counted, logged
                    self._served_anyway(fill.image_id, verdict.reason or "", verdict.detail)
            if fill.signature_failure is not None:
                failure = fill.signature_failure
                self._served_anyway(fill.image_id, failure.reason, failure.detail)
            removal = self._removals.get(fill.image_id)
            if removal is not None:
                await asyncio.shield(removal)  # an older copy's removal must not hit the new one
            try:
                await self._in_disk(self._store.commit, fill.partial, fill.fd, entry)
            except OSError:
                LOG.exception("could not commit image %s; it stays uncached", fill.image_id)
            else:
                committed = True
                self._reserved -= fill.size
                self._index.add(entry)
                self._cooling.pop(fill.image_id, None)
                LOG.info("committed image %s (%d bytes, %.1f s)", fill.image_id, fill.size,
                         self._clock.monotonic() - started)
        except asyncio.CancelledError:
            if fill.stalled:  # a silent upstream, not wrong bytes: no cool-down
                fill.fail(FillStalled(f"fill of {fill.image_id} stalled"))
            else:
                fill.fail(FillAborted(f"fill of {fill.image_id} cancelled"))
                raise
        except CacheDiskError as exc:
            # Our disk, not the image: no cool-down; readers relay the rest (relay).
            fill.fail(exc)
            self._metrics.disk_errors.labels(op="write").inc()
            LOG.warning("fill of %s: %s; its callers get the rest from upstream",
                        fill.image_id, exc)
        except UpstreamRefused as exc:
            fill.fail(exc)  # this caller's answer, not the image's: no cool-down
        except UpstreamError as exc:
            if exc.reason == "size":  # upstream's body and record disagree: not transient
                self._failed(fill, exc)
            else:
                fill.fail(exc)  # a refused connection or a 5xx may be gone in a second
            self._metrics.upstream_errors.labels(reason=exc.reason).inc()
            LOG.warning("fill of %s failed: %s", fill.image_id, exc)
        except UnsafeImage as exc:
            fill.fail(exc)
            self._reject(fill, exc)
        except FillAborted as exc:
            self._failed(fill, exc)
            self._metrics.integrity_failures.inc()
            LOG.error("fill of %s discarded: %s", fill.image_id, exc)
        except Exception as exc:
            fill.fail(exc)
            LOG.exception("fill of %s failed", fill.image_id)
        finally:
            self._metrics.fills_in_progress.dec()
            if not committed:
                self._reserved -= fill.size
            if self._fills.get(fill.image_id) is fill:
                del self._fills[fill.image_id]
            self._written_by_ended += fill.written
            self._demand_changed()
            if self._fill_tasks.get(fill.image_id) is asyncio.current_task():
                del self._fill_tasks[fill.image_id]
            # Closing the last descriptor of an unlinked multi-GiB file frees its
            # blocks; that, like unlink, can block for hundreds of ms.
            await asyncio.shield(self._in_disk(self._close_partial, fill, committed))
            self._publish()
            self._sample_disk_soon()

    async def _arm_signature(
        self, fill: Fill, headers: Mapping[str, str], project_id: str | None
    ) -> None:
        """The signature verifier, before the first byte (the certificate comes from the
        key manager as the caller who started the fill). Under ``log`` a failure here
        is counted and the image served unverified."""
        assert self._signatures is not None
        fill.signature_enforced = self._safety.mode is not Mode.LOG
        try:
            fill.signature = await self._signatures.verifier(fill.meta, headers, project_id)
        except CertificateRefused as exc:  # this caller's answer: nothing kept of the image
            if fill.signature_enforced:
                self._metrics.image_safety_rejections.labels(reason="signature").inc()
                LOG.warning("image %s refused to this caller: %s", fill.image_id, exc.message)
                raise
            fill.signature_failure = UnsafeImage(fill.image_id, "signature", exc.detail)
        except UnsafeImage as exc:
            if fill.signature_enforced:
                raise
            fill.signature_failure = exc

    def _served_anyway(self, image_id: str, reason: str, detail: str) -> None:
        self._metrics.image_safety_rejections.labels(reason=reason).inc()
        LOG.warning("image %s would be refused as unsafe (%s): %s; [image_safety] mode = log "
                    "keeps it", image_id, reason, detail)

    def _reject(self, fill: Fill, exc: UnsafeImage) -> None:
        """Keep an unsafe image out: counted and logged once, no fill of its bytes again."""
        verdict = fill.verdict
        self._remember_rejection(fill.meta, exc.reason, exc.detail,
                                 verdict.detected if verdict else None)
        LOG.error("image %s refused as unsafe (%s): %s; it is not cached", fill.image_id,
                  exc.reason, exc.detail)

    def _remember_rejection(
        self, meta: ImageMeta, reason: str, detail: str, detected: str | None
    ) -> None:
        self._rejected.pop(meta.id, None)
        self._rejected[meta.id] = Rejection(meta, reason, detail, detected, self._clock.time())
        while len(self._rejected) > MAX_REJECTIONS:
            del self._rejected[next(iter(self._rejected))]
        self._metrics.image_safety_rejections.labels(reason=reason).inc()

    def _failed(self, fill: Fill, exc: BaseException) -> None:
        """End a fill whose upstream bytes are wrong (hash, size): cool the image down.

        The same bytes would most likely come again, so for ``failure_cooldown``
        seconds no new fill of them starts (:meth:`cooldown`).
        """
        fill.fail(exc)
        if self._failure_cooldown > 0:
            self._cooling[fill.image_id] = Cooldown(
                fill.meta, self._clock.monotonic() + self._failure_cooldown, str(exc)
            )

    def relay(
        self, fill: Fill, headers: Mapping[str, str], *, offset: int, stop: int
    ) -> AsyncGenerator[bytes, None]:
        """Bytes ``[offset, stop)`` of a fill whose disk failed, read from upstream with the
        reader's own ``headers``; the last one only once the image is verified
        (see :func:`edgecache.core.relay.relay`)."""
        hash_from, hasher = fill.relay_start()
        return relay(
            self._source, fill.meta, headers, size=fill.size,
            hash_from=hash_from, hasher=hasher, send_from=offset, send_to=stop,
            max_resumes=self._max_resume_attempts, sleep=self._clock.sleep,
        )

    def _close_partial(self, fill: Fill, committed: bool) -> None:
        fill.close_fd()
        fill.close()
        if not committed:
            self._store.discard(fill.partial)

    async def wait_fill(self, fill: Fill) -> bool:
        """Wait until ``fill`` has ended; True if its image is committed now.

        Waiting never cancels the fill (it belongs to the cache).
        """
        task = self._fill_tasks.get(fill.image_id)
        if task is not None and self._fills.get(fill.image_id) is fill:
            await asyncio.wait([task])
        entry = self._index.get(fill.image_id)
        return entry is not None and same_bytes(entry, fill.meta)

    async def wait_commit(self, image_id: str) -> None:
        """If a fill of the image has verified every byte, wait until it is committed."""
        fill = self._fills.get(image_id)
        if fill is not None and fill.verified:
            await self.wait_fill(fill)

    def cancel_prefetch(self, image_id: str) -> bool:
        """Stop a fill that only a prefetch wants (no live caller joined it).

        A fill that has verified every byte is only committing: it is left to finish.
        """
        fill = self._fills.get(image_id)
        if fill is None or fill.throttle is None or fill.verified:
            return False
        return self._cancel_fill(image_id)

    def _cancel_fill(self, image_id: str) -> bool:
        task = self._fill_tasks.get(image_id)
        if task is None or task.done():
            return False
        coro = task.get_coro()
        if inspect.iscoroutine(coro) and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
            # Cancelled before its first step, a task never enters _run_fill, whose
            # `finally` unregisters the fill: it would be listed for ever. Its first
            # step is already scheduled; cancel it right after that.
            asyncio.get_running_loop().call_soon(task.cancel)
        else:
            task.cancel()
        return True

    async def purge(self, image_id: str) -> bool:
        """An operator removes an image: its fill in progress stops, its copy goes.

        A fill that has verified every byte is let finish its commit (never cut
        mid-rename), and what it committed is evicted; otherwise the image would
        come back after the operator removed it. False if there was nothing.
        """
        while (starting := self._starting.get(image_id)) is not None:
            await asyncio.shield(starting)  # a fill whose partial is being created: stop it too
        fill = self._fills.get(image_id)
        if fill is not None:
            if not fill.verified:
                self._cancel_fill(image_id)
            await self.wait_fill(fill)
        evicted = await self.evict(image_id)
        return evicted or fill is not None

    async def purge_all(self) -> int:
        """Every fill in progress stops and every committed image goes (pinned ones too)."""
        for image_id in list(self._fills):
            await self.purge(image_id)
        return await self.evict_all()

    def abandon_stalled(self) -> list[str]:
        """Cancel fills that made no progress for ``stall_time``; their partials go."""
        now = self._clock.monotonic()
        stalled = []
        for image_id, fill in list(self._fills.items()):
            if not fill.verified and policy.is_stalled(
                last_progress=fill.last_progress, now=now, stall_time=self._stall_time
            ):
                task = self._fill_tasks.get(image_id)
                if task is not None and not task.done():
                    LOG.warning("fill of %s made no progress for %.0f s; abandoning it",
                                image_id, self._stall_time)
                    fill.stalled = True
                    task.cancel()
                    stalled.append(image_id)
        return stalled

    # -- eviction -----------------------------------------------------------------------

    def evict_soon(self, image_id: str) -> None:
        """Drop an entry now; its file goes in the background (readers keep their fds)."""
        self._evict_now(image_id)

    async def evict(self, image_id: str) -> bool:
        """Drop an entry and wait until its file is gone. False if it was not cached."""
        if image_id not in self._index:
            return False
        self._evict_now(image_id)
        removal = self._removals.get(image_id)
        if removal is not None:
            await asyncio.shield(removal)
        return True

    async def evict_all(self) -> int:
        """Every committed image goes, pinned ones too: an operator asked for it by name."""
        victims = [entry.image_id for entry in self._index.lru_order()]
        for image_id in victims:
            await self.evict(image_id)
        return len(victims)

    def _evict_now(self, image_id: str) -> None:
        if self._index.remove(image_id) is None:
            return
        self._dirty.discard(image_id)
        self._metrics.evictions.inc()
        self._publish()
        previous = self._removals.get(image_id)
        task = asyncio.create_task(self._remove_files(image_id, previous))
        self._removals[image_id] = task
        task.add_done_callback(lambda done: self._forget_removal(image_id, done))

    async def _remove_files(self, image_id: str, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.shield(previous)
        try:
            await self._in_disk(self._store.remove, image_id)
        except OSError:
            LOG.exception("could not remove the files of image %s", image_id)
        self._sample_disk_soon()

    def _forget_removal(self, image_id: str, task: asyncio.Task[None]) -> None:
        if self._removals.get(image_id) is task:
            del self._removals[image_id]

    async def prune(self) -> list[Entry]:
        """Evict least recently used images until the cache is within ``max_size``.

        Returns the evicted entries (usually none: the bound is kept on admission).
        """
        victims = policy.over_limit(
            lru=self._index.lru_order(),
            used=self._index.total_bytes,
            reserved=self._reserved,
            max_size=self._max_size,
        )
        for victim in victims:
            await self.evict(victim.image_id)
        return victims

    async def resize(self, max_size: int) -> None:
        """Apply a new ``max_size`` (a reload): eviction down to it follows at once.

        Fills in progress keep their reservation; if they alone exceed the new
        bound, every committed image goes and the fills still finish.
        """
        self._max_size = max_size
        self._publish()
        await self.prune()

    # -- pins and verification ------------------------------------------------------------

    def _pinned_bytes(self) -> int:
        return sum(entry.size for entry in self._index.lru_order() if entry.pinned)

    def check_pin_room(self, image_id: str, size: int, *, promised: int = 0) -> None:
        """Raise NoSpace unless pinning ``size`` more bytes keeps every pin within max_size.

        ``promised`` counts bytes already promised to pins of images still queued.
        The cache could otherwise never make room for anything else, or not even
        for the pins themselves.
        """
        total = policy.pinned_total(self._pinned_bytes(), promised, size)
        if total > self._max_size:
            raise NoSpace(
                f"pinning image {image_id} ({size} bytes) would pin {total} bytes, "
                f"more than [cache] max_size ({self._max_size} bytes)"
            )

    async def pin(self, image_id: str, *, pinned: bool = True, promised: int = 0) -> Entry | None:
        """Pin (never evict) or unpin a committed image; None if it is not cached.

        Raises NoSpace when the pins would not fit (:meth:`check_pin_room`).
        """
        entry = self._index.get(image_id)
        if entry is None:
            return None
        if pinned and not entry.pinned:
            self.check_pin_room(image_id, entry.size, promised=promised)
        if entry.pinned != pinned:
            entry.pinned = pinned
            await self._in_disk(self._store.save_entries, [entry])
        return _copy(entry)

    async def mark_verified(self, checked: Entry, at: float) -> bool:
        """Record that the committed bytes of ``checked`` hashed right at ``at``.

        False (nothing recorded) when the entry was evicted or replaced meanwhile.
        """
        entry = self._current(checked)
        if entry is None:
            return False
        entry.extra[VERIFIED_AT] = at
        await self._in_disk(self._store.save_entries, [entry])
        return True

    def report_damaged(self, entry: Entry, detail: str) -> None:
        """A committed file is not what was committed (found while serving it): evict it now,
        so the next request refetches and verifies, and count it."""
        if self._current(entry) is None:
            return
        LOG.error("cached image %s is damaged (%s); evicting it", entry.image_id, detail)
        self._metrics.integrity_failures.inc()
        self.evict_soon(entry.image_id)

    async def discard_corrupt(self, checked: Entry, detail: str) -> bool:
        """Evict a committed image whose bytes no longer hash right, and count it.

        False when the entry was evicted or replaced meanwhile (then nothing is done).
        """
        if self._current(checked) is None:
            return False
        LOG.error("cached image %s is corrupt (%s); evicting it", checked.image_id, detail)
        self._metrics.integrity_failures.inc()
        await self.evict(checked.image_id)
        return True

    @property
    def safety(self) -> SafetyPolicy:
        """``[image_safety]``, as the scrubber re-checks committed images against it."""
        return self._safety

    async def discard_unsafe(self, checked: Entry, reason: str, detail: str) -> bool:
        """Evict a committed image the format inspector now refuses (the scrubber's
        re-check), count it, and refuse its bytes from now on. False when the entry was
        evicted or replaced meanwhile."""
        live = self._current(checked)
        if live is None:
            return False
        meta = ImageMeta(
            id=live.image_id, status="active", size=live.size, checksum=live.checksum,
            os_hash_algo=live.os_hash_algo, os_hash_value=live.os_hash_value,
            updated_at=live.updated_at, disk_format=live.extra.get(DISK_FORMAT),
        )
        self._remember_rejection(meta, reason, detail, live.extra.get(DETECTED_FORMAT))
        LOG.error("cached image %s refused as unsafe on re-check (%s): %s; evicting it",
                  live.image_id, reason, detail)
        await self.evict(live.image_id)
        return True

    def _current(self, entry: Entry) -> Entry | None:
        """The live entry ``entry`` is a copy of, if it is still the committed one."""
        live = self._index.get(entry.image_id)
        if live is None or live.committed_at != entry.committed_at:
            return None
        return live if same_bytes(live, entry) else None

    # -- housekeeping -------------------------------------------------------------------

    async def _housekeeping_loop(self) -> None:
        interval = min(max(self._stall_time / 4, 0.25), 30.0)
        while True:
            await self._clock.sleep(interval)
            try:
                self.abandon_stalled()
                await self._flush_dirty()
                self._sample_disk_soon()  # others write to the disk too
            except Exception:
                LOG.exception("housekeeping pass failed")

    async def _flush_dirty(self) -> None:
        if not self._dirty:
            return
        entries = [e for i in self._dirty if (e := self._index.get(i)) is not None]
        self._dirty.clear()
        await self._in_disk(self._store.save_entries, entries)

    def _publish(self) -> None:
        self._metrics.cache_size.set(self._index.total_bytes)
        self._metrics.cache_images.set(len(self._index))
        self._metrics.cache_max_size.set(self._max_size)


def _open_sized(path: Path) -> tuple[int, int]:
    """Open a committed file read-only: ``(fd, its size)`` (blocking)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fd, os.fstat(fd).st_size
    except BaseException:
        os.close(fd)
        raise


def _discard_created(store: DiskStore, partial: Path, fd: int) -> None:
    """Drop a partial file no fill took over (blocking)."""
    os.close(fd)
    store.discard(partial)


def _copy(entry: Entry) -> Entry:
    return dataclasses.replace(entry, extra=dict(entry.extra))


def _progress(fill: Fill) -> FillProgress:
    return FillProgress(
        image_id=fill.image_id,
        bytes_done=fill.written,
        bytes_total=fill.size,
        prefetch=fill.throttle is not None,
        verified=fill.verified,
    )
