"""The image cache: hit, join a fill, or start one; admission, eviction, housekeeping.

:class:`ImageCache` owns the index, the fills in progress and the disk store.
A fill belongs to the cache, not to the request that started it: it runs as its
own task, and a caller that disconnects does not cancel it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from edgecache import metrics as m
from edgecache.core import policy
from edgecache.core.diskstore import DiskStore
from edgecache.core.fill import Fill, Throttle
from edgecache.core.index import Index
from edgecache.errors import FillAborted, FillStalled, NoSpace, UpstreamError, UpstreamRefused
from edgecache.model import Entry, ImageMeta, ImageSource, same_bytes

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    """A committed image opened for one reader (the caller closes ``fd``)."""

    entry: Entry
    fd: int


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
        metrics: m.Metrics | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.source = source
        self.max_size = max_size
        self.stall_time = stall_time
        self.verify = verify
        self.max_resume_attempts = max_resume_attempts
        self.metrics = metrics or m.Metrics()
        self._clock = clock
        self._monotonic = monotonic
        self.index = Index()
        self.fills: dict[str, Fill] = {}
        self._fill_tasks: dict[str, asyncio.Task[None]] = {}
        self.reserved = 0
        self._dirty: set[str] = set()
        self._housekeeping: asyncio.Task[None] | None = None
        #: background removals of evicted files, by image (a commit of the same id waits)
        self._removals: dict[str, asyncio.Task[None]] = {}
        #: set while no demand fill runs (see demand_fills): prefetches wait on it
        self._demand_idle = asyncio.Event()
        self._demand_idle.set()

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, reconcile the index with the disk, start housekeeping."""
        entries = await asyncio.to_thread(self.store.open)
        self.index.load(entries)
        LOG.info(
            "cache at %s: %d images, %d bytes (max %d)",
            self.store.root, len(self.index), self.index.total_bytes, self.max_size,
        )
        await self.enforce_limit()
        self._publish()
        self._housekeeping = asyncio.create_task(self._housekeeping_loop())

    async def stop(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        for image_id, task in list(self._fill_tasks.items()):
            fill = self.fills.get(image_id)
            if fill is None or not fill.verified:
                task.cancel()  # a verified fill is only committing: let it finish
        for task in list(self._fill_tasks.values()) + list(self._removals.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._flush_dirty()
        await asyncio.to_thread(self.store.close)

    # -- lookups ------------------------------------------------------------------------

    def committed(self, meta: ImageMeta) -> Entry | None:
        """The committed entry holding exactly the bytes ``meta`` describes.

        An entry whose image changed upstream (size or hash) is evicted: it must
        be refetched, never served.
        """
        entry = self.index.get(meta.id)
        if entry is None:
            return None
        if not entry.matches(meta):
            LOG.info("image %s changed upstream; evicting the cached copy", meta.id)
            self.evict_soon(meta.id)
            return None
        return entry

    def open_hit(self, entry: Entry) -> Hit | None:
        """Open a committed image for reading and count the access; None if it vanished."""
        try:
            fd = os.open(self.store.data_path(entry.image_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self.index.remove(entry.image_id)
            return None
        self.index.touch(entry.image_id, self._clock())
        self._dirty.add(entry.image_id)
        return Hit(entry, fd)

    # -- fairness: demand fills before prefetch fills ------------------------------------

    @property
    def demand_fills(self) -> int:
        """Fills running for a live caller (started by one, or a prefetch one joined)."""
        return sum(1 for fill in self.fills.values() if fill.throttle is None)

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
        fill = self.fills.get(meta.id)
        if fill is None or fill.error is not None or not same_bytes(fill.meta, meta):
            return None
        fill.lift_throttle()
        self._demand_changed()
        return fill

    def fill_for(
        self, meta: ImageMeta, headers: Mapping[str, str], *, throttle: Throttle | None = None
    ) -> tuple[Fill, bool] | None:
        """Join the image's fill in progress, or start one. ``(fill, started_now)``.

        ``throttle`` marks a prefetch: a fill it starts reads at the prefetch rate
        until a live caller (no throttle) joins, which lifts the cap for good.
        Returns None when the image cannot be cached: its size is unknown, or it
        does not fit within ``max_size`` even after evicting everything evictable.
        """
        fill = self.fills.get(meta.id)
        if fill is not None and fill.error is None:
            if throttle is None:
                fill.lift_throttle()
                self._demand_changed()
            return fill, False
        size = meta.size
        if size is None:
            return None
        victims = policy.victims_for(
            size,
            lru=self.index.lru_order(),
            used=self.index.total_bytes,
            reserved=self.reserved,
            max_size=self.max_size,
        )
        if victims is None:
            LOG.warning("image %s (%d bytes) cannot fit in the cache; not caching it",
                        meta.id, size)
            return None
        for victim in victims:
            self._evict_now(victim.image_id)
        partial, fd = self.store.create_partial(meta.id)
        fill = Fill(meta, size=size, partial=partial, fd=fd, verify=self.verify,
                    clock=self._monotonic,
                    on_received=self.metrics.upstream_fetched_bytes.inc)
        fill.throttle = throttle
        self.reserved += size
        self.fills[meta.id] = fill
        task = asyncio.create_task(self._run_fill(fill, dict(headers)), name=f"fill-{meta.id}")
        self._fill_tasks[meta.id] = task
        self._demand_changed()
        self._publish()
        return fill, True

    async def _run_fill(self, fill: Fill, headers: dict[str, str]) -> None:
        started = self._monotonic()
        self.metrics.fills_in_progress.inc()
        committed = False
        try:
            await self._download(fill, headers)
            entry = Entry.from_meta(fill.meta, size=fill.size, now=self._clock())
            removal = self._removals.get(fill.image_id)
            if removal is not None:
                await asyncio.shield(removal)  # an older copy's removal must not hit the new one
            try:
                await asyncio.to_thread(self.store.commit, fill.partial, fill.fd, entry)
            except OSError:
                LOG.exception("could not commit image %s; it stays uncached", fill.image_id)
            else:
                committed = True
                self.reserved -= fill.size
                self.index.add(entry)
                LOG.info("committed image %s (%d bytes, %.1f s)", fill.image_id, fill.size,
                         self._monotonic() - started)
        except asyncio.CancelledError:
            fill.fail(FillStalled(f"fill of {fill.image_id} stalled") if fill.stalled
                      else FillAborted(f"fill of {fill.image_id} cancelled"))
            if not fill.stalled:
                raise
        except (UpstreamRefused, UpstreamError) as exc:
            fill.fail(exc)
            if isinstance(exc, UpstreamError):
                self.metrics.upstream_errors.labels(reason=exc.reason).inc()
                LOG.warning("fill of %s failed: %s", fill.image_id, exc)
        except FillAborted as exc:
            fill.fail(exc)
            self.metrics.integrity_failures.inc()
            LOG.error("fill of %s discarded: %s", fill.image_id, exc)
        except Exception as exc:
            fill.fail(exc)
            LOG.exception("fill of %s failed", fill.image_id)
        finally:
            self.metrics.fills_in_progress.dec()
            if not committed:
                self.reserved -= fill.size
            if self.fills.get(fill.image_id) is fill:
                del self.fills[fill.image_id]
            self._demand_changed()
            if self._fill_tasks.get(fill.image_id) is asyncio.current_task():
                del self._fill_tasks[fill.image_id]
            # Closing the last descriptor of an unlinked multi-GiB file frees its
            # blocks; that, like unlink, can block for hundreds of ms.
            await asyncio.shield(asyncio.to_thread(self._close_partial, fill, committed))
            self._publish()

    async def _download(self, fill: Fill, headers: dict[str, str]) -> None:
        """Pump the image into the fill, resuming a body that breaks off, then verify it.

        A break (a connection lost mid-body, or a close-delimited body that ends
        early) is resumed with ``Range: bytes=N-`` up to ``max_resume_attempts``
        times; the readers see one uninterrupted body.
        """
        resumes = 0
        while True:
            try:
                body = await self.source.open_image(
                    fill.image_id, headers, offset=fill.received, meta=fill.meta
                )
            except UpstreamError:
                if not fill.received or resumes >= self.max_resume_attempts:
                    raise
                resumes += 1
                await asyncio.sleep(min(0.1 * 2 ** resumes, 5.0))
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
                if exc.reason != "body" or resumes >= self.max_resume_attempts:
                    raise
                self.metrics.upstream_errors.labels(reason="body").inc()
                LOG.warning("image %s: upstream body broke off at %d of %d bytes; resuming",
                            fill.image_id, fill.received, fill.size)
                resumes += 1
                continue
            finally:
                body.close()
            if fill.received < fill.size and resumes < self.max_resume_attempts:
                LOG.warning("image %s: upstream body ended at %d of %d bytes; resuming",
                            fill.image_id, fill.received, fill.size)
                resumes += 1
                continue
            fill.verify()
            return

    def _close_partial(self, fill: Fill, committed: bool) -> None:
        fill.close()
        os.close(fill.fd)
        if not committed:
            self.store.discard(fill.partial)

    # -- eviction -----------------------------------------------------------------------

    def evict_soon(self, image_id: str) -> None:
        """Drop an entry now; its file goes in the background (readers keep their fds)."""
        self._evict_now(image_id)

    async def evict(self, image_id: str) -> bool:
        """Drop an entry and wait until its file is gone. False if it was not cached."""
        if image_id not in self.index:
            return False
        self._evict_now(image_id)
        removal = self._removals.get(image_id)
        if removal is not None:
            await asyncio.shield(removal)
        return True

    def _evict_now(self, image_id: str) -> None:
        if self.index.remove(image_id) is None:
            return
        self._dirty.discard(image_id)
        self.metrics.evictions.inc()
        self._publish()
        previous = self._removals.get(image_id)
        task = asyncio.create_task(self._remove_files(image_id, previous))
        self._removals[image_id] = task
        task.add_done_callback(lambda done: self._forget_removal(image_id, done))

    async def _remove_files(self, image_id: str, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.shield(previous)
        try:
            await asyncio.to_thread(self.store.remove, image_id)
        except OSError:
            LOG.exception("could not remove the files of image %s", image_id)

    def _forget_removal(self, image_id: str, task: asyncio.Task[None]) -> None:
        if self._removals.get(image_id) is task:
            del self._removals[image_id]

    async def enforce_limit(self) -> None:
        """Evict least recently used images until the cache is within ``max_size``."""
        for victim in policy.over_limit(
            lru=self.index.lru_order(),
            used=self.index.total_bytes,
            reserved=self.reserved,
            max_size=self.max_size,
        ):
            await self.evict(victim.image_id)

    async def resize(self, max_size: int) -> None:
        """Apply a new ``max_size`` (a reload): eviction down to it follows at once.

        Fills in progress keep their reservation; if they alone exceed the new
        bound, every committed image goes and the fills still finish.
        """
        self.max_size = max_size
        self._publish()
        await self.enforce_limit()

    # -- housekeeping -------------------------------------------------------------------

    async def _housekeeping_loop(self) -> None:
        interval = min(max(self.stall_time / 4, 0.25), 30.0)
        while True:
            await asyncio.sleep(interval)
            try:
                self.abandon_stalled()
                await self._flush_dirty()
            except Exception:
                LOG.exception("housekeeping pass failed")

    def abandon_stalled(self) -> list[str]:
        """Cancel fills that made no progress for ``stall_time``; their partials go."""
        now = self._monotonic()
        stalled = []
        for image_id, fill in list(self.fills.items()):
            if policy.is_stalled(last_progress=fill.last_progress, now=now,
                                 stall_time=self.stall_time):
                task = self._fill_tasks.get(image_id)
                if task is not None and not task.done():
                    LOG.warning("fill of %s made no progress for %.0f s; abandoning it",
                                image_id, self.stall_time)
                    fill.stalled = True
                    task.cancel()
                    stalled.append(image_id)
        return stalled

    async def _flush_dirty(self) -> None:
        if not self._dirty:
            return
        entries = [e for i in self._dirty if (e := self.index.get(i)) is not None]
        self._dirty.clear()
        await asyncio.to_thread(self.store.save_entries, entries)

    # -- operator hooks (prefetch, pinning, the cache API) ---------------------------

    async def wait_fill(self, fill: Fill) -> bool:
        """Wait until ``fill`` has ended; True if its image is committed now.

        Waiting never cancels the fill (it belongs to the cache).
        """
        task = self._fill_tasks.get(fill.image_id)
        if task is not None and self.fills.get(fill.image_id) is fill:
            await asyncio.wait([task])
        entry = self.index.get(fill.image_id)
        return entry is not None and entry.matches(fill.meta)

    def cancel_prefetch(self, image_id: str) -> bool:
        """Stop a fill that only a prefetch wants (no live caller joined it)."""
        fill = self.fills.get(image_id)
        task = self._fill_tasks.get(image_id)
        if fill is None or fill.throttle is None or task is None or task.done():
            return False
        task.cancel()
        return True

    def pinned_bytes(self) -> int:
        return sum(entry.size for entry in self.index.lru_order() if entry.pinned)

    async def pin(self, image_id: str, *, pinned: bool = True, reserved: int = 0) -> Entry | None:
        """Pin (never evict) or unpin a committed image; None if it is not cached.

        Raises NoSpace when the pinned images (plus ``reserved`` bytes promised
        to pins still queued) would exceed ``max_size``: the cache could then
        never make room for anything else, or not even for the pins.
        """
        entry = self.index.get(image_id)
        if entry is None:
            return None
        if pinned and not entry.pinned:
            total = self.pinned_bytes() + reserved + entry.size
            if total > self.max_size:
                raise NoSpace(
                    f"pinning image {image_id} ({entry.size} bytes) would pin {total} bytes, "
                    f"more than [cache] max_size ({self.max_size} bytes)"
                )
        if entry.pinned != pinned:
            entry.pinned = pinned
            await asyncio.to_thread(self.store.save_entries, [entry])
        return entry

    def _publish(self) -> None:
        self.metrics.cache_size.set(self.index.total_bytes)
        self.metrics.cache_images.set(len(self.index))
        self.metrics.cache_max_size.set(self.max_size)
