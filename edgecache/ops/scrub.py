"""Re-hashing committed images: bit rot, a bad disk or a stray write must not be served.

A fill verifies an image once, before commit; hits never re-hash (that would
cost a core per GB/s served). The scrubber re-reads each committed image every
``[cache] scrub_interval`` seconds, paced at ``scrub_rate`` bytes/s so it never
competes with clients for the disk, and checks it against the hash Glance
recorded. A mismatch evicts the image (the next request refetches and verifies
it) and counts in ``edgecache_integrity_failures_total``. :meth:`Scrubber.verify`
does the same on demand, at full speed.

Due times (``verified_at`` is wall time, as the index shows it), the idle
sleeps and the pacing all run on the injected :class:`~edgecache.clock.Clock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass

from edgecache.clock import SYSTEM, Clock
from edgecache.core.cache import ImageCache
from edgecache.core.inspection import Inspection, Mode
from edgecache.core.views import DETECTED_FORMAT, DISK_FORMAT, verified_at
from edgecache.model import Entry, strongest_hash
from edgecache.ops.ratelimit import TokenBucket

LOG = logging.getLogger(__name__)

#: Bytes hashed per thread hop (and per debit of the rate cap).
CHUNK = 1 << 20
#: Longest sleep of an idle scrubber, so new entries are looked at reasonably soon.
IDLE = 60.0
#: Pause after a scrub that failed, so an entry that keeps failing is never spun on.
FAILURE_PAUSE = 1.0


@dataclass(frozen=True)
class Verdict:
    image_id: str
    #: ok | corrupt | unsafe (the format inspector refuses it now) | gone (evicted or
    #: replaced while it was being read)
    result: str
    size: int
    detail: str = ""


def _hash_range(
    fd: int, hasher: hashlib._Hash | None, offset: int, length: int,
    inspection: Inspection | None = None,
) -> int:
    """Hash (and inspect, until the inspector decides) up to ``length`` bytes from
    ``offset``; returns how many were read."""
    done = 0
    while done < length:
        data = os.pread(fd, min(CHUNK, length - done), offset + done)
        if not data:
            break
        if hasher is not None:
            hasher.update(data)
        if inspection is not None and inspection.verdict is None:
            inspection.feed(data)
        done += len(data)
    return done


class Scrubber:
    """The background re-hash loop and on-demand verification."""

    def __init__(
        self,
        cache: ImageCache,
        *,
        rate: int,
        interval: float = 86400.0,
        clock: Clock = SYSTEM,
    ) -> None:
        self.cache = cache
        self.rate = rate
        self.interval = interval
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.rate > 0:
            self._task = asyncio.create_task(self._run(), name="scrubber")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- the loop -------------------------------------------------------------------

    def next_due(self) -> tuple[Entry | None, float]:
        """The entry scrubbed longest ago if it is due, else None and the wait until one is."""
        oldest: Entry | None = None
        for entry in self.cache.entries():
            if oldest is None or verified_at(entry) < verified_at(oldest):
                oldest = entry
        if oldest is None:
            return None, min(self.interval, IDLE)
        wait = verified_at(oldest) + self.interval - self._clock.time()
        return (oldest, 0.0) if wait <= 0 else (None, min(wait, self.interval, IDLE))

    async def _run(self) -> None:
        bucket = TokenBucket(self.rate, burst=CHUNK, clock=self._clock)
        while True:
            entry, wait = self.next_due()
            if entry is None:
                await self._clock.sleep(wait)
                continue
            try:
                await self.check(entry, bucket)
            except Exception:
                LOG.exception("scrub of %s failed", entry.image_id)
                await self._clock.sleep(FAILURE_PAUSE)

    # -- one image ------------------------------------------------------------------

    async def verify(self, image_id: str) -> Verdict | None:
        """Re-hash one committed image now, unpaced; None if it is not cached."""
        entry = self.cache.entry(image_id)
        if entry is None:
            return None
        return await self.check(entry)

    async def verify_all(self) -> list[Verdict]:
        return [await self.check(entry) for entry in self.cache.entries()]

    async def check(self, entry: Entry, bucket: TokenBucket | None = None) -> Verdict:
        """Hash the committed file of ``entry``; evict it if it no longer matches."""
        image_id = entry.image_id
        opened = await self.cache.open_committed(image_id)
        if opened is None:
            return await self._corrupt(entry, "the file is missing")
        fd = opened.fd
        inspection = self._inspection_of(entry)
        try:
            expected = strongest_hash(entry)
            hasher = hashlib.new(expected[0]) if expected else None
            on_disk = (await asyncio.to_thread(os.fstat, fd)).st_size
            read = 0
            if bucket is None:
                read = await asyncio.to_thread(_hash_range, fd, hasher, 0, entry.size, inspection)
            else:
                while read < entry.size:
                    step = min(CHUNK, entry.size - read)
                    got = await asyncio.to_thread(_hash_range, fd, hasher, read, step,
                                                  inspection)
                    read += got
                    if got < step:
                        break
                    await bucket.take(got)
        finally:
            await self.cache.close_fd(fd)
        if opened.entry.committed_at != entry.committed_at:
            return Verdict(image_id, "gone", entry.size)
        if on_disk != entry.size or read != entry.size:
            return await self._corrupt(entry, f"{on_disk} bytes on disk, {entry.size} recorded")
        if hasher is not None and expected is not None and hasher.hexdigest() != expected[1]:
            return await self._corrupt(entry, f"{expected[0]} differs from Glance's")
        if inspection is not None:
            refused = await self._recheck(entry, inspection)
            if refused is not None:
                return refused
        if not await self.cache.mark_verified(entry, self._clock.time()):
            return Verdict(image_id, "gone", entry.size)
        return Verdict(image_id, "ok", entry.size)

    def _inspection_of(self, entry: Entry) -> Inspection | None:
        """The format check of a committed copy: against the record's ``disk_format``
        when the fill kept it, else (a copy cached before inspection) safety only."""
        policy = self.cache.safety
        if not policy.inspects:
            return None
        label = entry.extra.get(DISK_FORMAT)
        return Inspection(entry.image_id, label, policy, label_known=label is not None)

    async def _recheck(self, entry: Entry, inspection: Inspection) -> Verdict | None:
        """The inspector's verdict on the bytes just re-read; an unsafe copy is evicted
        (``enforce``) or logged (``log``). None when the copy is fine."""
        verdict = inspection.conclude()
        reason, detail = verdict.reason, verdict.detail
        kept = entry.extra.get(DETECTED_FORMAT)
        if reason is None and kept is not None and verdict.detected != kept:
            reason = "disk_format_mismatch"
            detail = f"its content is {verdict.detected}, {kept} when it was cached"
        if reason is None:
            return None
        if inspection.policy.mode is not Mode.ENFORCE:
            LOG.warning("cached image %s would be refused as unsafe (%s): %s", entry.image_id,
                        reason, detail)
            return None
        if not await self.cache.discard_unsafe(entry, reason, detail):
            return Verdict(entry.image_id, "gone", entry.size)
        return Verdict(entry.image_id, "unsafe", entry.size, f"{reason}: {detail}")

    async def _corrupt(self, entry: Entry, detail: str) -> Verdict:
        if not await self.cache.discard_corrupt(entry, detail):
            return Verdict(entry.image_id, "gone", entry.size)
        return Verdict(entry.image_id, "corrupt", entry.size, detail)
