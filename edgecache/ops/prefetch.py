"""The prefetch queue: images operators asked for, fetched before anyone boots them.

The queue is durable: a diskcache ``Index`` under ``<cache>/prefetch`` (sqlite,
one transaction per change) holds the queued ids in FIFO order, one row per
image, so a restart or a ``kill -9`` loses nothing. An id stays queued until
its image is committed (or given up on), as in Glance, so an interrupted
prefetch starts again after a restart.

``workers`` tasks take ids in order. Each prefetch is an ordinary fill of the
cache, started with a *throttle*: it reads upstream no faster than
``max_rate`` (shared by all prefetches). A live request for the same image
joins that fill instead of fetching again, and joining lifts the throttle:
from then on the fill reads as fast as upstream sends, so the live caller is
never slowed by the cap. Pacing is done by not reading the socket, so TCP flow
control slows the upstream sender itself.

Retry pauses, the workers' waits and the pacing all run on one injected
:class:`~edgecache.clock.Clock`, so each rule can be tested by moving time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import diskcache

from edgecache.backoff import Backoff
from edgecache.clock import SYSTEM, Clock
from edgecache.core.cache import ImageCache
from edgecache.core.fill import Fill
from edgecache.errors import (
    EdgecacheError,
    FillCoolingDown,
    NoSpace,
    UnsafeImage,
    UpstreamError,
    UpstreamRefused,
)
from edgecache.metrics import Metrics
from edgecache.model import ImageMeta
from edgecache.ops.ratelimit import TokenBucket
from edgecache.upstream.service_auth import Credentials, NoCredentials

LOG = logging.getLogger(__name__)

#: Attempts of one image whose fetch keeps failing for a transient reason.
MAX_ATTEMPTS = 5
#: Longest pause between two attempts of one image (seconds).
MAX_BACKOFF = 60.0
#: Pause after the n-th failed attempt of one image: 2, 4, 8, ... s, at most MAX_BACKOFF.
RETRY_BACKOFF = Backoff(base=2.0, factor=2.0, cap=MAX_BACKOFF)
RESULTS = ("cached", "present", "failed")
MAX_FAILURES_KEPT = 100
#: While live callers' fills run, a running prefetch reads one piece per this many
#: seconds (a pause long enough to leave them the link, short enough that upstream
#: does not give up on the idle connection).
DEMAND_YIELD = 1.0


class MetadataSource(Protocol):
    async def image_metadata(self, image_id: str, headers: Mapping[str, str]) -> ImageMeta: ...


@dataclass
class QueuedImage:
    """One queue row (what survives a restart)."""

    image_id: str
    queued_at: float
    #: the size Glance reported when it was queued (None for the legacy route)
    size: int | None = None
    #: pin the image once it is cached
    pin: bool = False

    @classmethod
    def from_record(cls, record: Any) -> QueuedImage | None:
        if not isinstance(record, dict) or not isinstance(record.get("image_id"), str):
            return None
        size = record.get("size")
        return cls(
            image_id=record["image_id"],
            queued_at=float(record.get("queued_at") or 0.0),
            size=size if isinstance(size, int) else None,
            pin=bool(record.get("pin")),
        )


@dataclass
class _State:
    """What a worker is doing with a queued image (memory only)."""

    state: str = "queued"  # queued | fetching | retrying
    attempts: int = 0
    #: monotonic time before which it is not tried again (0: now)
    not_before: float = 0.0
    error: str | None = None
    fill: Fill | None = None


class PrefetchQueue:
    """The durable FIFO of queued images. Every method blocks: call it in a thread."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._index: diskcache.Index | None = None

    def open(self) -> list[QueuedImage]:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._index = diskcache.Index(str(self.directory))
        items = []
        for key, record in list(self._index.items()):
            item = QueuedImage.from_record(record)
            if item is None or item.image_id != key:
                del self._index[key]
                continue
            items.append(item)
        return items

    @property
    def index(self) -> diskcache.Index:
        if self._index is None:
            raise RuntimeError("PrefetchQueue used before open()")
        return self._index

    def put(self, item: QueuedImage) -> None:
        """Append (or update in place: a row keeps its position)."""
        self.index[item.image_id] = asdict(item)

    def remove(self, image_id: str) -> None:
        self.index.pop(image_id, None)

    def clear(self) -> None:
        self.index.clear()

    def close(self) -> None:
        if self._index is not None:
            self._index.cache.close()
            self._index = None


class DemandGauge(Protocol):
    """What prefetches need to know of live callers' fills (an ImageCache)."""

    @property
    def demand_fills(self) -> int: ...

    async def demand_idle(self) -> None: ...


class _PacedFill:
    """The throttle of one prefetch fill, until a live caller joins it.

    Demand first: while any live caller's fill runs, the prefetch reads one piece
    per ``DEMAND_YIELD`` seconds (enough to keep its connection alive), leaving
    the upstream link to the callers; otherwise it reads at the shared rate cap.
    """

    def __init__(self, bucket: TokenBucket, demand: DemandGauge, clock: Clock = SYSTEM) -> None:
        self._bucket = bucket
        self._demand = demand
        self._clock = clock
        self._lifted = asyncio.Event()

    async def take(self, amount: int) -> None:
        if self._lifted.is_set():
            return
        if self._demand.demand_fills:
            await self._yield_to_demand()
        if not self._lifted.is_set() and not self._bucket.unlimited:
            await self._bucket.take(amount, until=self._lifted)

    async def _yield_to_demand(self) -> None:
        waits = [
            asyncio.ensure_future(self._demand.demand_idle()),
            asyncio.ensure_future(self._lifted.wait()),
            asyncio.ensure_future(self._clock.sleep(DEMAND_YIELD)),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def lift(self) -> None:
        self._lifted.set()


class Prefetcher:
    """The queue plus its workers."""

    def __init__(
        self,
        cache: ImageCache,
        source: MetadataSource,
        queue: PrefetchQueue,
        *,
        workers: int = 2,
        max_rate: int = 0,
        credentials: Credentials | None = None,
        metrics: Metrics | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.cache = cache
        self.source = source
        self.queue = queue
        self.workers = max(1, workers)
        self.bucket = TokenBucket(max_rate, clock=clock)
        self.credentials = credentials or NoCredentials()
        self.metrics = metrics or Metrics()
        self._clock = clock
        self._items: dict[str, QueuedImage] = {}
        self._states: dict[str, _State] = {}
        self._active: set[str] = set()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # keeps disk writes in the order they were asked for
        self._tasks: list[asyncio.Task[None]] = []
        #: the last prefetches given up on, newest last (so `queue --wait` can say why)
        self.failures: deque[dict[str, Any]] = deque(maxlen=MAX_FAILURES_KEPT)
        for result in RESULTS:
            self.metrics.prefetch.labels(result=result)

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        for item in await asyncio.to_thread(self.queue.open):
            self._items[item.image_id] = item
            self._states[item.image_id] = _State()
        if self._items:
            LOG.info("prefetch queue: %d images carried over", len(self._items))
        self._publish()
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"prefetch-{n}")
            for n in range(self.workers)
        ]

    async def stop(self) -> None:
        """Stop the workers; queued images stay queued (their fills stop with the cache)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        async with self._lock:
            await asyncio.to_thread(self.queue.close)

    # -- what the API asks --------------------------------------------------------------

    async def enqueue(self, image_id: str, *, size: int | None = None, pin: bool = False) -> bool:
        """Queue an image (durably, before returning). False if it was queued already."""
        async with self._lock:
            existing = self._items.get(image_id)
            if existing is not None:
                if (pin and not existing.pin) or (size is not None and existing.size is None):
                    existing.pin = existing.pin or pin
                    existing.size = existing.size if existing.size is not None else size
                    await asyncio.to_thread(self.queue.put, existing)
                return False
            item = QueuedImage(image_id, queued_at=self._clock.time(), size=size, pin=pin)
            await asyncio.to_thread(self.queue.put, item)
            self._items[image_id] = item
            self._states[image_id] = _State()
        self._publish()
        self._wake.set()
        return True

    async def remove(self, image_id: str) -> bool:
        """Unqueue an image; a fill only this prefetch wanted stops. False if not queued."""
        async with self._lock:
            item = self._items.pop(image_id, None)
            self._states.pop(image_id, None)
            if item is not None:
                await asyncio.to_thread(self.queue.remove, image_id)
        if item is None:
            return False
        self.cache.cancel_prefetch(image_id)
        self._publish()
        return True

    async def clear(self) -> int:
        """Unqueue everything; returns how many images were queued."""
        async with self._lock:
            removed = list(self._items)
            self._items.clear()
            self._states.clear()
            await asyncio.to_thread(self.queue.clear)
        for image_id in removed:
            self.cache.cancel_prefetch(image_id)
        self._publish()
        return len(removed)

    async def set_pin(self, image_id: str, pin: bool) -> bool:
        """Change whether a queued image is pinned once cached. False if not queued."""
        async with self._lock:
            item = self._items.get(image_id)
            if item is None:
                return False
            if item.pin != pin:
                item.pin = pin
                await asyncio.to_thread(self.queue.put, item)
        return True

    def queued(self) -> list[str]:
        """Queued ids, first queued first (in progress ones included, as Glance lists them)."""
        return list(self._items)

    def is_queued(self, image_id: str) -> bool:
        return image_id in self._items

    def pending_pin_bytes(self) -> int:
        """Bytes promised to pins of images not cached yet."""
        return sum(
            item.size or 0
            for item in self._items.values()
            if item.pin and not self.cache.is_committed(item.image_id)
        )

    def progress(self) -> list[dict[str, Any]]:
        """Each queued image: state, bytes done and total (when known)."""
        rows = []
        for image_id, item in self._items.items():
            state = self._states.get(image_id) or _State()
            fill = self.cache.fill_progress(image_id)
            rows.append({
                "image_id": image_id,
                "state": state.state,
                "bytes_done": fill.bytes_done if fill is not None else 0,
                "bytes_total": fill.bytes_total if fill is not None else item.size,
                "pin": item.pin,
                "attempts": state.attempts,
                "error": state.error,
                "queued_at": item.queued_at,
            })
        return rows

    # -- the workers ----------------------------------------------------------------------

    def _claim(self) -> QueuedImage | None:
        now = self._clock.monotonic()
        for image_id, item in self._items.items():
            if image_id in self._active:
                continue
            state = self._states.setdefault(image_id, _State())
            if state.not_before <= now:
                return item
        return None

    def _next_retry_in(self) -> float | None:
        now = self._clock.monotonic()
        waits = [
            state.not_before - now
            for image_id, state in self._states.items()
            if image_id not in self._active and state.not_before > 0
        ]
        return max(0.05, min(waits)) if waits else None

    async def _worker(self) -> None:
        while True:
            self._wake.clear()
            item = self._claim()
            if item is None:
                await self._clock.wait(self._wake, self._next_retry_in())
                continue
            self._active.add(item.image_id)
            try:
                await self._prefetch(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                LOG.exception("prefetch of %s failed", item.image_id)
                await self._retry(item, f"internal error: {exc!r}")
            finally:
                self._active.discard(item.image_id)
                self._wake.set()  # another worker may take what this one skipped

    async def _prefetch(self, item: QueuedImage) -> None:
        image_id = item.image_id
        state = self._states.setdefault(image_id, _State())
        # Demand first: no prefetch starts while a live caller's fill is running.
        await self.cache.demand_idle()
        state.state, state.error = "fetching", None
        try:
            headers = await self.credentials.headers()
            headers["x-openstack-request-id"] = f"req-{uuid.uuid4()}"
            project_id = await self.credentials.project_id()  # for signed images' certificates
            meta = await self.source.image_metadata(image_id, headers)
        except UpstreamRefused as refusal:
            await self._finish(item, "failed", f"Glance answered {refusal.status}")
            return
        except UpstreamError as exc:
            self.metrics.upstream_errors.labels(reason=exc.reason).inc()
            await self._retry(item, str(exc))
            return
        if meta.status != "active":
            await self._finish(item, "failed", f"the image is {meta.status}, not active")
            return
        if self.cache.committed(meta) is not None:
            await self._finish(item, "present")
            return
        if self._items.get(image_id) is not item:
            return  # unqueued while Glance was asked: start nothing
        try:
            joined = await self.cache.fill_for(
                meta, headers, throttle=_PacedFill(self.bucket, self.cache, self._clock),
                project_id=project_id,
            )
        except FillCoolingDown as exc:
            await self._retry(item, str(exc))
            return
        except UnsafeImage as exc:
            await self._finish(item, "failed", str(exc))
            return
        if joined is not None and self._items.get(image_id) is not item:
            self.cache.cancel_prefetch(image_id)  # unqueued while its file was created
            return
        if joined is None:
            why = "its size is unknown" if meta.size is None else (
                f"it ({meta.size} bytes) does not fit in the cache"
            )
            await self._finish(item, "failed", why)
            return
        fill, _ = joined
        state.fill = fill
        try:
            committed = await self.cache.wait_fill(fill)
        finally:
            state.fill = None
        if committed:
            await self._finish(item, "cached")
        elif isinstance(fill.error, UpstreamRefused):
            await self._finish(item, "failed", f"Glance answered {fill.error.status}")
        elif isinstance(fill.error, UnsafeImage):
            await self._finish(item, "failed", str(fill.error))
        else:
            await self._retry(item, str(fill.error or "the fill did not commit"))

    async def _retry(self, item: QueuedImage, error: str) -> None:
        state = self._states.get(item.image_id)
        if self._items.get(item.image_id) is not item or state is None:
            return  # unqueued meanwhile
        state.attempts += 1
        state.error = error
        if state.attempts >= MAX_ATTEMPTS:
            await self._finish(item, "failed", f"{error} ({state.attempts} attempts)")
            return
        delay = RETRY_BACKOFF.delay(state.attempts)
        state.state, state.not_before = "retrying", self._clock.monotonic() + delay
        LOG.warning("prefetch of %s: %s; retrying in %.0f s", item.image_id, error, delay)

    async def _finish(self, item: QueuedImage, result: str, error: str | None = None) -> None:
        async with self._lock:
            if self._items.get(item.image_id) is not item:
                return  # unqueued meanwhile: an operator's decision, not an outcome
            del self._items[item.image_id]
            self._states.pop(item.image_id, None)
            await asyncio.to_thread(self.queue.remove, item.image_id)
        self.metrics.prefetch.labels(result=result).inc()
        self._publish()
        if error is not None:
            LOG.warning("prefetch of %s given up: %s", item.image_id, error)
            self.failures.append(
                {"image_id": item.image_id, "error": error, "at": self._clock.time()}
            )
            return
        LOG.info("prefetch of %s: %s", item.image_id, result)
        if item.pin:
            try:
                await self.cache.pin(item.image_id, promised=self.pending_pin_bytes())
            except NoSpace as exc:
                LOG.warning("prefetched image %s is not pinned: %s", item.image_id, exc)
            except EdgecacheError:
                LOG.exception("could not pin %s", item.image_id)

    def _publish(self) -> None:
        self.metrics.prefetch_queue_length.set(len(self._items))
