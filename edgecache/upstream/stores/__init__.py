"""Direct reads from the stores Glance keeps image bytes in (``[upstream] direct_stores``).

Glance stays the authority: the store URLs come from the image record Glance
returned to the caller (``locations`` with ``show_multiple_locations``, or
``direct_url``), so a caller Glance refuses never gets this far. Every backend
keeps one contract, :meth:`StoreBackend.open`: a missing object is
:class:`~edgecache.errors.NotFound`, anything else that goes wrong is
:class:`~edgecache.errors.UpstreamError`, and a location the backend will not
contact (outside ``[upstream] direct_store_allow``, a redirect, a token for
another host) is :class:`~edgecache.upstream.stores.allow.StoreRefused`
before anything is sent. :class:`DirectStoreSource` tries the locations in
order and falls back to Glance's own ``/file``.
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
from edgecache.upstream.stores.allow import StoreAllowlist, StoreRefused, redact
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
    session: aiohttp.ClientSession,
    keystone: KeystoneSession | None = None,
    *,
    allow: StoreAllowlist,
) -> StoreRegistry:
    """``file://``, ``http(s)://``, ``swift``; ``s3://`` too where the ``s3`` extra is installed.

    Each reads only what ``allow`` covers.
    """
    backends: list[StoreBackend] = [FileStore(allow=allow), HttpStore(session, allow=allow)]
    # swift(+http/+https)://: v1 auth from the URL, or the [upstream_auth] session
    backends.append(SwiftStore(session, keystone, allow=allow))
    if s3.available():
        backends.append(s3.S3Store(allow=allow))
    return StoreRegistry(backends)


class DirectStoreSource:
    """An :class:`ImageSource` reading from the record's store locations, else from Glance.

    Store bytes are only as good as the hash they are verified against, so an
    image without one (size only: no ``os_hash_value``, no ``checksum``) is
    never read from a store. Otherwise each location the registry can read is
    tried in order; when none yields the object (refused, missing,
    unreachable, wrong size), the fill falls back to ``glance.open_image``.
    Once per fill, a refusal is logged and counted as
    ``edgecache_upstream_errors_total{reason="store_refused"}`` (even when a
    later location is read), and a fallback for any other failure as
    ``reason="store"``; the fill's resumes then stay on Glance.
    """

    def __init__(self, glance: ImageSource, stores: StoreRegistry, metrics: Metrics) -> None:
        self.glance = glance
        self.stores = stores
        self.metrics = metrics
        #: images whose fill in progress gave up on their stores
        self._fell_back: set[str] = set()
        #: images whose fill in progress has had a refusal counted
        self._refused: set[str] = set()

    async def open_image(
        self,
        image_id: str,
        headers: Mapping[str, str],
        *,
        offset: int = 0,
        meta: ImageMeta | None = None,
    ) -> ImageBody:
        if offset == 0:  # a fill starts from byte 0: a new fill
            self._fell_back.discard(image_id)
            self._refused.discard(image_id)
        urls = [u for u in (meta.locations if meta else ()) if self.stores.readable(u)]
        if meta is None or not urls or image_id in self._fell_back:
            return await self.glance.open_image(image_id, headers, offset=offset, meta=meta)
        if meta.strongest_hash() is None:
            self._fell_back.add(image_id)
            self._note_refusals(image_id, ["the record has no hash to verify store bytes by"])
            return await self.glance.open_image(image_id, headers, offset=offset, meta=meta)
        refusals: list[str] = []
        failures: list[str] = []
        for url in urls:
            try:
                body = await self.stores.open(url, offset)
            except StoreRefused as exc:
                refusals.append(str(exc))
                continue
            except (NotFound, UpstreamError) as exc:
                failures.append(str(exc))
                continue
            expected = meta.size - body.start if meta.size is not None else None
            if body.content_length is not None and expected is not None \
                    and body.content_length != expected:
                body.close()
                failures.append(f"{redact(url)}: {body.content_length} bytes from "
                                f"{body.start}, the record says {expected}")
                continue
            self._note_refusals(image_id, refusals)
            return body
        self._fell_back.add(image_id)
        self._note_refusals(image_id, refusals)
        if failures:
            self.metrics.upstream_errors.labels(reason="store").inc()
            LOG.warning("image %s: no store location readable (%s); reading it from Glance",
                        image_id, "; ".join(failures))
        return await self.glance.open_image(image_id, headers, offset=offset, meta=meta)

    def _note_refusals(self, image_id: str, refusals: list[str]) -> None:
        """Count and log the refusals of a fill, once per fill."""
        if not refusals or image_id in self._refused:
            return
        self._refused.add(image_id)
        self.metrics.upstream_errors.labels(reason="store_refused").inc()
        LOG.warning("image %s: store location refused (%s); not contacted", image_id,
                    "; ".join(refusals))
