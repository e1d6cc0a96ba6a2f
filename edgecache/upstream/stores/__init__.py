"""Direct reads from the stores Glance keeps image bytes in (``[upstream] direct_stores``).

Glance stays the authority: the store URLs come from the image record Glance
returned to the caller (``locations`` with ``show_multiple_locations``, or
``direct_url``), so a caller Glance refuses never gets this far. Every backend
keeps one contract, :meth:`StoreBackend.open`: a missing object is
:class:`~edgecache.errors.NotFound`, anything else that goes wrong is
:class:`~edgecache.errors.UpstreamError`. :class:`DirectStoreSource` tries the
locations in order and falls back to Glance's own ``/file``.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Protocol

import aiohttp

from edgecache.errors import NotFound, UpstreamError
from edgecache.metrics import Metrics
from edgecache.model import ImageBody, ImageMeta, ImageSource
from edgecache.upstream.stores import s3
from edgecache.upstream.stores.file import FileStore
from edgecache.upstream.stores.http import HttpStore
from edgecache.upstream.stores.swift import KeystoneSession, SwiftStore

LOG = logging.getLogger(__name__)


class StoreBackend(Protocol):
    """One kind of store, named by the URL schemes it reads."""

    schemes: tuple[str, ...]

    async def open(self, url: str, offset: int = 0) -> ImageBody:
        """The object at ``url`` from byte ``offset`` on, ready to stream.

        Raises NotFound when the store has no such object, UpstreamError
        (reason ``store``) for any other failure.
        """
        ...


class StoreRegistry:
    """The store backends by URL scheme."""

    def __init__(self, backends: Iterable[StoreBackend]) -> None:
        self._by_scheme = {scheme: b for b in backends for scheme in b.schemes}

    def readable(self, url: str) -> bool:
        """Whether some backend reads URLs of this scheme."""
        return urllib.parse.urlsplit(url).scheme.lower() in self._by_scheme

    async def open(self, url: str, offset: int = 0) -> ImageBody:
        backend = self._by_scheme.get(urllib.parse.urlsplit(url).scheme.lower())
        if backend is None:
            raise UpstreamError(f"no store backend reads {url.split(':', 1)[0]}:// URLs",
                                reason="store")
        return await backend.open(url, offset)


def default_stores(
    session: aiohttp.ClientSession, keystone: KeystoneSession | None = None
) -> StoreRegistry:
    """``file://`` and ``http(s)://``; ``s3://`` too where the ``s3`` extra is installed."""
    backends: list[StoreBackend] = [FileStore(), HttpStore(session)]
    # swift(+http/+https)://: v1 auth from the URL, or the [upstream_auth] session
    backends.append(SwiftStore(session, keystone))
    if s3.available():
        backends.append(s3.S3Store())
    return StoreRegistry(backends)


class DirectStoreSource:
    """An :class:`ImageSource` reading from the record's store locations, else from Glance.

    Each location the registry can read is tried in order; when none yields the
    object (missing, unreachable, wrong size), the fill falls back to
    ``glance.open_image``. The fallback is logged and counted
    (``edgecache_upstream_errors_total{reason="store"}``) once per fill, and the
    fill's resumes then stay on Glance.
    """

    def __init__(self, glance: ImageSource, stores: StoreRegistry, metrics: Metrics) -> None:
        self.glance = glance
        self.stores = stores
        self.metrics = metrics
        #: images whose fill in progress gave up on their stores
        self._fell_back: set[str] = set()

    async def open_image(
        self,
        image_id: str,
        headers: Mapping[str, str],
        *,
        offset: int = 0,
        meta: ImageMeta | None = None,
    ) -> ImageBody:
        if offset == 0:
            self._fell_back.discard(image_id)  # a fill starts from byte 0: a new fill
        urls = [u for u in (meta.locations if meta else ()) if self.stores.readable(u)]
        if urls and image_id not in self._fell_back:
            failures: list[str] = []
            for url in urls:
                try:
                    body = await self.stores.open(url, offset)
                except (NotFound, UpstreamError) as exc:
                    failures.append(str(exc))
                    continue
                expected = meta.size - body.start if meta and meta.size is not None else None
                if body.content_length is not None and expected is not None \
                        and body.content_length != expected:
                    body.close()
                    failures.append(f"{url}: {body.content_length} bytes from {body.start}, "
                                    f"the record says {expected}")
                    continue
                return body
            self._fell_back.add(image_id)
            self.metrics.upstream_errors.labels(reason="store").inc()
            LOG.warning("image %s: no store location readable (%s); reading it from Glance",
                        image_id, "; ".join(failures))
        return await self.glance.open_image(image_id, headers, offset=offset, meta=meta)
