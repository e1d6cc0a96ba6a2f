"""``GET``/``HEAD /v2/images/{id}/file``: hit, join a fill, or start one.

Glance decides first (the caller's own ``GET /v2/images/{id}``, reused for
``auth_cache_ttl``); only an ``active`` image it lets the caller see is served
from the cache. Every other state goes to Glance, whose answer (204, 403, ...)
the caller gets unchanged.

A 404 for an image edgecache holds may mean it was deleted upstream: the
:class:`~edgecache.access.purge.DeletionCheck` decides whether to purge it. When no
Glance answers at all, a cached copy is served only to a caller Glance granted
that image to within ``offline_auth_ttl`` (``serve_cached_on_upstream_failure``).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass

from aiohttp import web

from edgecache.access.grants import MetadataCache
from edgecache.access.purge import DeletionCheck
from edgecache.api import proxy
from edgecache.api.authn import caller_identity
from edgecache.api.errors import (
    CACHE_RESULT_KEY,
    REQUEST_ID_HEADER,
    REQUEST_ID_KEY,
    error_response,
)
from edgecache.api.ranges import BadRange, ByteRange, UnsatisfiableRange, requested_range
from edgecache.api.streaming import ClientGone, abort, send_fd
from edgecache.core.cache import ImageCache
from edgecache.core.fill import Fill
from edgecache.errors import FillAborted, UpstreamError, UpstreamRefused
from edgecache.metrics import Metrics
from edgecache.model import UUID_PATTERN, ImageMeta
from edgecache.upstream.glance import GlanceUpstream, forwarded

LOG = logging.getLogger(__name__)

_IMAGE_ID = re.compile(UUID_PATTERN)


@dataclass(frozen=True)
class ImageService:
    """What the image-data handler works with (one per application)."""

    cache: ImageCache
    metadata: MetadataCache
    upstream: GlanceUpstream
    metrics: Metrics
    #: purges images deleted upstream (None: never, as in bare tests)
    deletions: DeletionCheck | None = None


class _FirstByte:
    """Observes time to first byte once, and counts bytes by source."""

    def __init__(self, metrics: Metrics, result: str, source: str) -> None:
        self._metrics = metrics
        self._result = result
        self._bytes = metrics.served_bytes.labels(source=source)
        self._started = time.monotonic()
        self._seen = False

    def __call__(self, count: int) -> None:
        if not self._seen:
            self._seen = True
            self._metrics.time_to_first_byte.labels(result=self._result).observe(
                time.monotonic() - self._started
            )
        self._bytes.inc(count)


def _count(request: web.Request, metrics: Metrics, result: str) -> None:
    """Count the request's outcome and keep it for the access line (the last one wins)."""
    metrics.image_requests.labels(result=result).inc()
    request[CACHE_RESULT_KEY] = result


async def _pass_through(
    request: web.Request, service: ImageService, path_qs: str
) -> web.StreamResponse:
    """An image request Glance answers itself: its bytes are upstream bytes served."""
    _count(request, service.metrics, "miss")
    response, _ = await proxy.forward(
        request, service.upstream, path_qs,
        metrics=service.metrics, on_sent=_FirstByte(service.metrics, "miss", "upstream"),
        proxy=service.upstream.http_proxy if request.method == "GET" else None,
    )
    return response


async def image_data(
    request: web.Request, service: ImageService, image_id: str, path_qs: str
) -> web.StreamResponse:
    """Answer an image-data GET or HEAD."""
    metrics = service.metrics
    if not _IMAGE_ID.fullmatch(image_id):
        _count(request, metrics, "error")
        return error_response(404, f"No image found with ID {image_id[:64]}")
    call_headers = forwarded(request.headers)
    call_headers[REQUEST_ID_HEADER] = request[REQUEST_ID_KEY]
    offline = False
    try:
        meta = await service.metadata.get(image_id, call_headers)
    except UpstreamRefused as refusal:
        _count(request, metrics, "error")
        if refusal.status == 404 and service.deletions is not None:
            identity = caller_identity(request)
            service.deletions.not_found(
                image_id, caller_is_admin=identity is not None and identity.is_admin
            )
        return relay(refusal)
    except UpstreamError as exc:
        metrics.upstream_errors.labels(reason=exc.reason).inc()
        LOG.warning("image %s: no upstream answer: %s", image_id, exc)
        remembered = service.metadata.offline_answer(image_id, call_headers)
        if remembered is None:
            _count(request, metrics, "error")
            return unavailable()
        meta, offline = remembered, True

    if meta.status != "active":
        # Not servable from a cache: deactivated (403 unless admin), queued (204)...
        # Glance gives the answer; a copy we hold of it is stale.
        if image_id in service.cache.index:
            service.cache.evict_soon(image_id)
        return await _pass_through(request, service, path_qs)

    byte_range: ByteRange | None = None
    if meta.size is not None:
        try:
            byte_range = requested_range(
                request.headers.get("Range"), request.headers.get("Content-Range"), meta.size
            )
        except BadRange as exc:
            _count(request, metrics, "error")
            return error_response(400, str(exc))
        except UnsatisfiableRange as exc:
            _count(request, metrics, "error")
            return error_response(416, str(exc), **{"Content-Range": f"bytes */{meta.size}"})

    entry = service.cache.committed(meta)
    if entry is not None:
        hit = service.cache.open_hit(entry)
        if hit is not None:
            _count(request, metrics, "hit")
            LOG.debug("image %s: hit (%d bytes)", image_id, entry.size)
            try:
                return await _send_hit(request, meta, hit.fd, byte_range, metrics)
            finally:
                os.close(hit.fd)
    if offline:
        # Nothing cached to serve, and nobody upstream to fetch it from.
        _count(request, metrics, "error")
        return unavailable()

    if byte_range is not None and request.method == "GET":
        fill = service.cache.fill_in_progress(meta)
        if fill is not None:
            # A range of an image being fetched (typically a lower tier resuming a
            # broken body) is read from that fill, so upstream sees no second GET.
            _count(request, metrics, "coalesced")
            return await _send_fill(request, meta, fill, byte_range, "coalesced", metrics)
    if byte_range is not None or meta.size is None:
        # Glance never fills its cache from a partial read (LP#1664709); neither do we.
        return await _pass_through(request, service, path_qs)
    if request.method == "HEAD":
        _count(request, metrics, "miss")
        response = image_response(meta, None)
        await response.prepare(request)
        return response

    joined = service.cache.fill_for(meta, call_headers)
    if joined is None:
        return await _pass_through(request, service, path_qs)
    fill, started_now = joined
    # A fill that already verified every byte is as good as a committed file.
    result = "miss" if started_now else "hit" if fill.verified else "coalesced"
    _count(request, metrics, result)
    LOG.debug("image %s: %s, %s its fill", image_id, result,
              "started" if started_now else "joined")
    return await _send_fill(request, meta, fill, None, result, metrics)


async def _send_fill(
    request: web.Request, meta: ImageMeta, fill: Fill, byte_range: ByteRange | None,
    result: str, metrics: Metrics,
) -> web.StreamResponse:
    """Stream the image (or ``byte_range`` of it) from a fill, as its bytes arrive."""
    try:
        await fill.wait_started()
    except UpstreamRefused as refusal:
        _count(request, metrics, "error")
        return relay(refusal)
    except (UpstreamError, FillAborted) as exc:
        _count(request, metrics, "error")
        LOG.warning("image %s: fill could not start: %s", meta.id, exc)
        return unavailable()

    response = image_response(meta, byte_range)
    await response.prepare(request)
    start, stop = (byte_range.start, byte_range.stop) if byte_range else (0, fill.size)
    fd = fill.open_reader()
    try:
        await send_fd(
            request, fd, start, stop,
            readable=fill.wait_readable,
            on_sent=_FirstByte(metrics, result, "cache" if result == "hit" else "upstream"),
        )
        if fill.size == 0:
            await fill.wait_readable(0)
    except FillAborted as exc:
        LOG.error("image %s: aborting the response: %s", meta.id, exc)
        _count(request, metrics, "error")
        abort(request)
        return response  # aiohttp's write_eof meets a closed transport: no clean end
    except ClientGone:
        return response
    finally:
        os.close(fd)
    await response.write_eof()
    return response


async def _send_hit(
    request: web.Request, meta: ImageMeta, fd: int, byte_range: ByteRange | None,
    metrics: Metrics,
) -> web.StreamResponse:
    size = meta.size or 0
    response = image_response(meta, byte_range)
    await response.prepare(request)
    if request.method != "HEAD":
        start, stop = (byte_range.start, byte_range.stop) if byte_range else (0, size)
        try:
            await send_fd(request, fd, start, stop, on_sent=_FirstByte(metrics, "hit", "cache"))
        except ClientGone:
            return response
    await response.write_eof()
    return response


def image_response(meta: ImageMeta, byte_range: ByteRange | None) -> web.StreamResponse:
    """Glance's image-data headers: exact Content-Type, Content-Length, hex Content-MD5."""
    size = meta.size or 0
    response = web.StreamResponse(status=206 if byte_range else 200)
    response.headers["Content-Type"] = "application/octet-stream"
    if meta.checksum:
        response.headers["Content-MD5"] = meta.checksum
    if byte_range is not None:
        response.headers["Content-Range"] = byte_range.content_range(size)
        response.content_length = byte_range.length
    else:
        response.content_length = size
    return response


def relay(refusal: UpstreamRefused) -> web.Response:
    """Glance's own refusal (401/403/404/204...), as Glance sent it."""
    headers = dict(refusal.headers)
    if refusal.status == 204:
        return web.Response(status=204, headers=headers)
    if "Content-Type" not in headers:
        headers["Content-Type"] = "text/plain"
    return web.Response(status=refusal.status, body=refusal.body, headers=headers)


def unavailable() -> web.Response:
    """503 before any body: Nova retries it (glance-contract §1.1)."""
    return error_response(503, "The image service is unavailable; try again later.",
                          **{"Retry-After": "1"})
