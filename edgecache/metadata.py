"""Glance's answer to "may this caller read this image, and what is it?", reused briefly.

Every image request, hits included, is decided by upstream Glance: a
``GET /v2/images/{id}`` made with the caller's own credentials (spec §5.2). The
answer is reused for ``[upstream] auth_cache_ttl`` seconds, keyed by the image
and a hash of the caller's credentials (never the token itself). Concurrent
identical lookups share one upstream call.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from typing import Protocol

from aiocache import SimpleMemoryCache

from edgecache.upstream import ImageMeta

_CREDENTIAL_HEADERS = ("x-auth-token", "x-service-token", "x-roles")


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

    def __init__(self, source: MetadataSource, *, ttl: float) -> None:
        self._source = source
        self._ttl = ttl
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
            meta = await self._source.image_metadata(image_id, headers)
            if self._ttl > 0:
                await self._cache.set(key, meta, ttl=self._ttl)
            return meta
        finally:
            del self._in_flight[key]

    def forget(self, image_id: str) -> None:
        """Stop reusing any answer about an image (it was deleted or changed)."""
        self._generation[image_id] = self._generation.get(image_id, 0) + 1
