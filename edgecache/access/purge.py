"""Purging images deleted upstream, without letting strangers purge anything.

Glance answers 404 both for an image that is gone and for one the caller may
not see: from a caller's 404 alone edgecache cannot tell
which. Purging on any 404 would let any project evict any other project's
cached images at will (one request each, and a multi-GiB refetch over the WAN
for its owner). So a 404 only *starts* a purge when it is definitive:

* the caller was validated as an admin (Glance's ``context_is_admin``): an
  admin sees every image that exists, so its 404 means deleted;
* otherwise edgecache asks again with its own credentials (``[upstream_auth]``
  in keystone mode, none with noauth, where Glance's anonymous context is
  admin) and purges only on a 404 to *that*. A 401/403 (no credentials that see
  everything) or no answer decides nothing: the copy stays, and is still
  never served, since every request is authorized by Glance first.

These checks are at most one per image per ``min_interval`` (and one in flight),
so a flood of 404s costs Glance one metadata GET per image and interval
(measured on the injected :class:`~edgecache.clock.Clock`). Images nobody asks
for again stay until LRU eviction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Protocol

from edgecache.access.grants import MetadataCache
from edgecache.clock import SYSTEM, Clock
from edgecache.core.cache import ImageCache
from edgecache.errors import UpstreamError, UpstreamRefused
from edgecache.model import ImageMeta
from edgecache.upstream.service_auth import Credentials

LOG = logging.getLogger(__name__)


class _Source(Protocol):
    async def image_metadata(self, image_id: str, headers: Mapping[str, str]) -> ImageMeta: ...


class DeletionCheck:
    """Turns 404s seen by callers into purges, when they are definitive."""

    def __init__(
        self,
        cache: ImageCache,
        metadata: MetadataCache,
        source: _Source,
        credentials: Credentials,
        *,
        min_interval: float = 10.0,
        clock: Clock = SYSTEM,
    ) -> None:
        self._cache = cache
        self._metadata = metadata
        self._source = source
        self._credentials = credentials
        self._min_interval = min_interval
        self._clock = clock
        self._last_check: dict[str, float] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def not_found(self, image_id: str, *, caller_is_admin: bool) -> None:
        """A caller got Glance's 404 for ``image_id``: purge now, check, or ignore."""
        if not self._cache.holds(image_id):
            return
        if caller_is_admin:
            LOG.info("image %s: 404 to an admin: deleted upstream; purging the copy", image_id)
            self.purge(image_id)
            return
        now = self._clock.monotonic()
        if image_id in self._tasks or now - self._last_check.get(image_id, -1e18) < (
            self._min_interval
        ):
            return
        self._last_check[image_id] = now
        if len(self._last_check) > 4096:  # forget old checks; the bound is what matters
            cutoff = now - self._min_interval
            self._last_check = {k: v for k, v in self._last_check.items() if v >= cutoff}
        task = asyncio.create_task(self._check(image_id), name=f"deletion-check {image_id}")
        self._tasks[image_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(image_id, None))

    async def _check(self, image_id: str) -> None:
        try:
            headers = await self._credentials.headers()
            await self._source.image_metadata(image_id, headers)
        except UpstreamRefused as refusal:
            if refusal.status == 404:
                LOG.info("image %s: deleted upstream (404 to edgecache's own check); "
                         "purging the copy", image_id)
                self.purge(image_id)
            else:
                LOG.debug("image %s: deletion check answered %d: undecided",
                          image_id, refusal.status)
        except UpstreamError as exc:
            LOG.debug("image %s: deletion check failed: %s", image_id, exc)

    def purge(self, image_id: str) -> None:
        """Forget every answer about the image and evict its copy."""
        self._metadata.forget(image_id)
        self._cache.evict_soon(image_id)

    async def idle(self) -> None:
        """Wait until no check is in flight: a check's outcome (purge or not) is then known."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
