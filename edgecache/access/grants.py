"""Glance's answer to "may this caller read this image, and what is it?", reused briefly.

Every image request, hits included, is decided by upstream Glance: a
``GET /v2/images/{id}`` made with the caller's own credentials (spec §5.2). The
answer is reused for ``[upstream] auth_cache_ttl`` seconds, keyed by the image
and a hash of the caller's credentials (never the token itself). Concurrent
identical lookups share one upstream call.

Refusals are not reused: the next request asks Glance again. Each grant is also
remembered, with its time, for ``offline_auth_ttl``: while no Glance answers,
:meth:`MetadataCache.offline_answer` tells whether this same caller was allowed
this same image recently enough to be served a cached copy
(``serve_cached_on_upstream_failure``).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Protocol

from aiocache import SimpleMemoryCache

from edgecache.errors import UpstreamRefused
from edgecache.model import ImageMeta

_CREDENTIAL_HEADERS = ("x-auth-token", "x-service-token", "x-roles")
#: Bound on remembered grants: a caller can add one only with a token Glance accepts.
_MAX_GRANTS = 65536


class MetadataSource(Protocol):
    async def image_metadata(self, image_id: str, headers: Mapping[str, str]) -> ImageMeta: ...


def credentials_key(headers: Mapping[str, str]) -> str:
    """A digest of the caller's credentials: who is asking, without storing secrets."""
    digest = hashlib.sha256()
    for name in _CREDENTIAL_HEADERS:
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(headers.get(name, "").encode())
        digest.update(b"\0")
    return digest.hexdigest()


class MetadataCache:
    """Image records as the caller sees them, cached for ``ttl`` seconds."""

    def __init__(
        self,
        source: MetadataSource,
        *,
        ttl: float,
        offline_ttl: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._ttl = ttl
        self._offline_ttl = offline_ttl
        self._monotonic = monotonic
        #: (image id, credentials key) -> (when Glance granted it, what it said)
        self._grants: OrderedDict[tuple[str, str], tuple[float, ImageMeta]] = OrderedDict()
        self._cache = SimpleMemoryCache()
        self._in_flight: dict[str, asyncio.Future[ImageMeta]] = {}
        # Bumped to forget an image: old keys simply stop matching and expire.
        self._generation: dict[str, int] = {}

    async def get(self, image_id: str, headers: Mapping[str, str]) -> ImageMeta:
        """The image's record for this caller; Glance's refusals propagate as raised."""
        key = f"{image_id}:{self._generation.get(image_id, 0)}:{credentials_key(headers)}"
        if self._ttl > 0:
            cached = await self._cache.get(key)
            if isinstance(cached, ImageMeta):
                return cached
        pending = self._in_flight.get(key)
        if pending is None:
            # A task of its own: a caller that goes away must not cancel the
            # lookup other callers are waiting on.
            pending = asyncio.ensure_future(self._lookup(key, image_id, dict(headers)))
            self._in_flight[key] = pending
        return await asyncio.shield(pending)

    async def _lookup(self, key: str, image_id: str, headers: dict[str, str]) -> ImageMeta:
        try:
            try:
                meta = await self._source.image_metadata(image_id, headers)
            except UpstreamRefused:
                # The latest word: a later outage must not resurrect an older grant.
                self._grants.pop((image_id, credentials_key(headers)), None)
                raise
            if self._offline_ttl > 0:
                self._remember_grant(image_id, credentials_key(headers), meta)
            if self._ttl > 0:
                await self._cache.set(key, meta, ttl=self._ttl)
            return meta
        finally:
            del self._in_flight[key]

    def forget(self, image_id: str) -> None:
        """Stop reusing any answer about an image (it was deleted or changed)."""
        self._generation[image_id] = self._generation.get(image_id, 0) + 1
        for grant in [g for g in self._grants if g[0] == image_id]:
            del self._grants[grant]

    def _remember_grant(self, image_id: str, credentials: str, meta: ImageMeta) -> None:
        grant = (image_id, credentials)
        self._grants[grant] = (self._monotonic(), meta)
        self._grants.move_to_end(grant)
        while len(self._grants) > _MAX_GRANTS:
            self._grants.popitem(last=False)

    def offline_answer(self, image_id: str, headers: Mapping[str, str]) -> ImageMeta | None:
        """Glance's last grant of this image to these credentials, if recent enough.

        Only for when no upstream answers at all: a refusal is never overridden.
        None when offline serving is off, or the grant is older than ``offline_ttl``.
        """
        if self._offline_ttl <= 0:
            return None
        remembered = self._grants.get((image_id, credentials_key(headers)))
        if remembered is None:
            return None
        granted_at, meta = remembered
        if self._monotonic() - granted_at > self._offline_ttl or meta.status != "active":
            return None
        return meta
