"""``GET``/``HEAD /v2/images/{id}/file``: hit, join a fill, or start one.

Glance decides first (the caller's own ``GET /v2/images/{id}``, reused for
``auth_cache_ttl``); only an ``active`` image it lets the caller see is served
from the cache. Every other state goes to Glance, whose answer (204, 403, ...)
the caller gets unchanged.

A 404 for an image edgecache holds may mean it was deleted upstream: the
:class:`~edgecache.access.purge.DeletionCheck` decides whether to purge it. When no
Glance answers at all, a cached copy is served only to a caller Glance granted
that image to within ``offline_auth_ttl`` (``serve_cached_on_upstream_failure``).

Seeing the record is not leave to download: before anything of the image leaves
the cache (a hit, a join, a range, a HEAD) Glance's ``download_image`` policy is
asked as the caller (:class:`~edgecache.access.grants.DownloadGrants`), and its
refusal is the answer. A caller that starts a fill is asked by its own data GET.
A fill that someone else started and Glance refused (their credentials, or the
prefetch's) is not this caller's answer: it starts or joins another with its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from edgecache.access.grants import DownloadGrants, GrantKey, MetadataCache
from edgecache.access.purge import DeletionCheck
from edgecache.api import proxy
from edgecache.api.authn import caller_identity
from edgecache.api.errors import (
    CACHE_RESULT_KEY,
    REQUEST_ID_HEADER,
    answer_for,
    error_response,
    unavailable,
    upstream_request_id,
)
from edgecache.api.ranges import BadRange, ByteRange, UnsatisfiableRange, requested_range
from edgecache.api.streaming import SENDERS_KEY, ClientGone, FileShrank, abort, send_fd
from edgecache.core.cache import ImageCache
from edgecache.core.decision import Action, Facts, Glance, Kind, Ranged, decide
from edgecache.core.fill import Fill
from edgecache.core.views import Copy, FillState, Hit
from edgecache.errors import (
    CacheDiskError,
    FillAborted,
    FillCoolingDown,
    UnsafeImage,
    UpstreamError,
    UpstreamRefused,
)
from edgecache.metrics import Metrics
from edgecache.model import ImageMeta, image_id_of
from edgecache.upstream.glance import GlanceUpstream, forwarded

LOG = logging.getLogger(__name__)



@dataclass(frozen=True)
class ImageService:
    """What the image-data handler works with (one per application)."""

    cache: ImageCache
    metadata: MetadataCache
    upstream: GlanceUpstream
    metrics: Metrics
    #: Glance's ``download_image`` verdicts per caller
    downloads: DownloadGrants
    #: purges images deleted upstream (None: never, as in bare tests)
    deletions: DeletionCheck | None = None
    #: a fill's data GET is Glance's ``/file`` as the caller (not a direct store read),
    #: so a caller starting a fill needs no separate download probe
    fill_asks_glance: bool = True


#: How often a caller re-tries a fill after fills started by others were refused.
_MAX_REJOINS = 3


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


class _Outcome:
    """How the request counts in ``edgecache_image_requests_total``: once, when it is known.

    A hit, a pass-through or a refusal is known before a byte is sent; a
    response fed by a fill is known when the fill has verified everything the
    response carries (before its last byte goes out), or when it fails.
    """

    def __init__(self, request: web.Request, metrics: Metrics, result: str) -> None:
        self._request = request
        self._metrics = metrics
        self.result = result
        self._counted = False

    def settle(self, result: str | None = None) -> None:
        if self._counted:
            return
        self._counted = True
        if result is not None:
            self.result = result
        self._metrics.image_requests.labels(result=self.result).inc()
        self._request[CACHE_RESULT_KEY] = self.result  # for the access line


async def _pass_through(
    request: web.Request, service: ImageService, path_qs: str, outcome: _Outcome
) -> web.StreamResponse:
    """An image request Glance answers itself: its bytes are upstream bytes served."""
    outcome.settle("miss")
    response, _ = await proxy.forward(
        request, service.upstream, path_qs,
        metrics=service.metrics, on_sent=_FirstByte(service.metrics, "miss", "upstream"),
        proxy=service.upstream.http_proxy if request.method == "GET" else None,
    )
    return response


@dataclass
class _Asked:
    """What the handler learnt before deciding: Glance's answer and the range."""

    meta: ImageMeta | None = None
    refusal: UpstreamRefused | None = None
    byte_range: ByteRange | None = None
    range_error: BadRange | UnsatisfiableRange | None = None


async def image_data(
    request: web.Request, service: ImageService, image_id: str, path_qs: str
) -> web.StreamResponse:
    """Answer an image-data GET or HEAD: gather the facts, decide, act, count once."""
    image_id = image_id_of(image_id) or image_id  # one form for every key
    headers = forwarded(request.headers)
    if caller_identity(request) is not None:
        headers.pop("x-roles", None)  # keystone mode: the token says who; a client's claim never
    headers[REQUEST_ID_HEADER] = upstream_request_id(request)
    asked = _Asked()
    facts = await _gather(request, service, image_id, headers, asked)
    action = decide(facts)
    probed = action.asks_download or (
        action.kind is Kind.START_FILL and facts.glance is Glance.GRANTED
        and not service.fill_asks_glance
    )
    if probed:
        action = await _ask_download(service, image_id, headers, asked, facts, action)
    hit: Hit | None = None
    if action.kind is Kind.SERVE_HIT and asked.meta is not None:
        hit = await service.cache.open_hit(asked.meta)
        if hit is None:  # the file vanished under us: decide as if nothing were cached
            action = decide(dataclasses.replace(facts, copy=Copy.ABSENT))
    outcome = _Outcome(request, service.metrics, action.result)
    try:
        if hit is not None:
            return await _send_hit(request, asked, hit, service, outcome)
        return await _perform(request, service, action, asked, headers, image_id, path_qs,
                              outcome, probed=probed)
    except asyncio.CancelledError:
        raise  # the client left: the request still counts as what it was (finally)
    except BaseException:
        outcome.settle("error")
        raise
    finally:
        outcome.settle()


async def _gather(
    request: web.Request, service: ImageService, image_id: str, headers: dict[str, str],
    asked: _Asked,
) -> Facts:
    """Ask Glance (as the caller), parse the Range, look at the cache: the facts to decide on."""
    method = request.method
    if image_id_of(image_id) is None:
        return Facts(method, id_is_uuid=False)
    glance = Glance.GRANTED
    try:
        meta = await service.metadata.get(image_id, headers)
    except UpstreamRefused as refusal:
        asked.refusal = refusal
        return Facts(method, glance=Glance.REFUSED, refusal_status=refusal.status)
    except UpstreamError as exc:
        service.metrics.upstream_errors.labels(reason=exc.reason).inc()
        LOG.warning("image %s: no upstream answer: %s", image_id, exc)
        remembered = service.metadata.offline_answer(image_id, headers)
        if remembered is None or not service.downloads.offline_granted(image_id, headers):
            return Facts(method, glance=Glance.UNREACHABLE)
        meta, glance = remembered, Glance.OFFLINE_GRANT
    asked.meta = meta
    ranged = Ranged.NONE
    if meta.size is not None:
        try:
            asked.byte_range = requested_range(
                request.headers.get("Range"), request.headers.get("Content-Range"), meta.size
            )
        except (BadRange, UnsatisfiableRange) as exc:
            asked.range_error = exc
            ranged = Ranged.BAD if isinstance(exc, BadRange) else Ranged.UNSATISFIABLE
        else:
            ranged = Ranged.NONE if asked.byte_range is None else Ranged.SATISFIABLE
    cache = service.cache
    copy, fill = cache.copy_of(meta), cache.fill_state(meta)
    # Admission walks the LRU table: only a request that may start a fill asks it.
    may_start = copy is not Copy.SAME and fill is FillState.NONE
    return Facts(
        method,
        glance=glance,
        status=meta.status,
        size_known=meta.size is not None,
        ranged=ranged,
        copy=copy,
        fill=fill,
        cooling_down=cache.cooldown(meta) is not None,
        fits=cache.can_admit(meta.size) if may_start else True,
    )


async def _download_verdict(
    service: ImageService, image_id: str, headers: dict[str, str]
) -> UpstreamRefused | UpstreamError | None:
    """Glance's ``download_image`` answer for this caller: None (allowed) or why not."""
    try:
        await service.downloads.check(image_id, headers)
    except (UpstreamRefused, UpstreamError) as exc:
        if isinstance(exc, UpstreamError):
            service.metrics.upstream_errors.labels(reason=exc.reason).inc()
            LOG.warning("image %s: no upstream answer to the download check: %s", image_id, exc)
        return exc
    return None


async def _refusal(
    service: ImageService, image_id: str, headers: dict[str, str], outcome: _Outcome
) -> web.Response | None:
    """Glance's refusal to let this caller download the image, as the answer; None if allowed."""
    verdict = await _download_verdict(service, image_id, headers)
    if verdict is None:
        return None
    outcome.settle("error")
    return answer_for(verdict)


async def _ask_download(
    service: ImageService, image_id: str, headers: dict[str, str], asked: _Asked,
    facts: Facts, action: Action,
) -> Action:
    """``action`` if Glance lets this caller download the image, else what to do instead."""
    verdict = await _download_verdict(service, image_id, headers)
    if verdict is None:
        return action
    if isinstance(verdict, UpstreamRefused):
        asked.refusal = verdict
        return decide(dataclasses.replace(
            facts, glance=Glance.REFUSED, refusal_status=verdict.status))
    if service.downloads.offline_granted(image_id, headers):
        return decide(dataclasses.replace(facts, glance=Glance.OFFLINE_GRANT))
    return decide(dataclasses.replace(facts, glance=Glance.UNREACHABLE))


async def _start_error(fill: Fill) -> BaseException | None:
    """What the fill failed with before its body began, or None once it started."""
    try:
        await fill.wait_started()
    except (UpstreamRefused, UpstreamError, FillAborted) as exc:
        return exc
    return None


async def _perform(
    request: web.Request,
    service: ImageService,
    action: Action,
    asked: _Asked,
    headers: dict[str, str],
    image_id: str,
    path_qs: str,
    outcome: _Outcome,
    *,
    probed: bool,
) -> web.StreamResponse:
    """Carry out ``action`` (every kind but a hit, which needs its opened file)."""
    meta = asked.meta
    if action.evict_copy and meta is not None:
        LOG.info("image %s: the cached copy is stale; evicting it", meta.id)
        service.cache.evict_soon(meta.id)
    kind = action.kind
    if kind is Kind.BAD_ID:
        return error_response(404, f"No image found with ID {image_id[:64]}")
    if kind is Kind.RELAY_REFUSAL and asked.refusal is not None:
        if action.report_not_found and service.deletions is not None:
            identity = caller_identity(request)
            service.deletions.not_found(
                image_id, caller_is_admin=identity is not None and identity.is_admin
            )
        return answer_for(asked.refusal)
    if kind is Kind.BAD_RANGE and asked.range_error is not None:
        return error_response(400, str(asked.range_error))
    if kind is Kind.UNSATISFIABLE_RANGE and asked.range_error is not None and meta is not None:
        return error_response(416, str(asked.range_error),
                              **{"Content-Range": f"bytes */{meta.size}"})
    if kind is Kind.PASS_THROUGH:
        return await _pass_through(request, service, path_qs, outcome)
    if meta is None or kind is Kind.UNAVAILABLE:
        return unavailable()
    if kind is Kind.HEAD_MISS:
        outcome.settle()
        response = image_response(meta, None)
        await response.prepare(request)
        return response
    if kind is Kind.SERVE_RANGE_FROM_FILL:
        fill = service.cache.fill_in_progress(meta)
        if fill is None or isinstance(await _start_error(fill), UpstreamRefused):
            # It ended in between, or Glance refused whoever started it: this
            # caller's own request goes to Glance.
            return await _pass_through(request, service, path_qs, outcome)
        # A range of an image being fetched (typically a lower tier resuming a
        # broken body) is read from that fill, so upstream sees no second GET.
        return await _send_fill(request, meta, fill, asked.byte_range, service.metrics, outcome,
                                cache=service.cache,
                                relay=_relay_for(service.cache, fill, headers))
    # JOIN_FILL, START_FILL, COOLING_DOWN: the cache has the last word, now.
    grant: GrantKey = service.downloads.key(image_id, headers)
    for _ in range(_MAX_REJOINS):
        hit = await service.cache.open_hit(meta)
        if hit is not None:
            # A fill committed it while this caller was being authorized: a hit,
            # once Glance has said this caller may download it.
            refused = None if probed else await _refusal(service, image_id, headers, outcome)
            if refused is not None:
                service.cache.release_fd(hit.fd)
                return refused
            return await _send_hit(request, asked, hit, service, outcome)
        try:
            identity = caller_identity(request)
            joined = await service.cache.fill_for(
                meta, headers, project_id=identity.project_id if identity else None
            )
        except FillCoolingDown as exc:
            outcome.settle("error")
            return answer_for(exc)
        except UnsafeImage as exc:  # refused before: no fill, but Glance's verdict first
            refused = None if probed else await _refusal(service, image_id, headers, outcome)
            if refused is not None:
                return refused
            outcome.settle("error")
            return answer_for(exc)
        if joined is None:
            return await _pass_through(request, service, path_qs, outcome)
        fill, started_now = joined
        if not started_now and not probed:
            # Someone else's fill of these bytes appeared meanwhile: ask first.
            probed = True
            refused = await _refusal(service, image_id, headers, outcome)
            if refused is not None:
                return refused
        failed = await _start_error(fill)
        if isinstance(failed, UpstreamRefused):
            if not started_now:
                # Glance refused the credentials that started it (another caller's,
                # or the prefetch's), not this caller's: start or join with its own.
                LOG.info("image %s: a fill started by other credentials was refused "
                         "(%d); fetching with the caller's own", meta.id, failed.status)
                continue
            service.downloads.refused(grant)
        elif failed is None and started_now and service.fill_asks_glance:
            service.downloads.note(grant)  # its own data GET was Glance's yes
        outcome.result = "miss" if started_now else "hit" if fill.verified else "coalesced"
        LOG.debug("image %s: %s, %s its fill", meta.id, outcome.result,
                  "started" if started_now else "joined")
        return await _send_fill(request, meta, fill, None, service.metrics, outcome,
                                cache=service.cache,
                                relay=_relay_for(service.cache, fill, headers))
    return await _pass_through(request, service, path_qs, outcome)


#: ``relay(offset, stop)``: the bytes of a fill whose disk failed, from upstream
_Relay = Callable[[int, int], AsyncGenerator[bytes, None]]


def _relay_for(cache: ImageCache, fill: Fill, headers: Mapping[str, str]) -> _Relay:
    """The caller's own upstream read, with its own credentials, for when the disk fails."""
    return lambda offset, stop: cache.relay(fill, headers, offset=offset, stop=stop)


async def _send_fill(
    request: web.Request, meta: ImageMeta, fill: Fill, byte_range: ByteRange | None,
    metrics: Metrics, outcome: _Outcome, *, cache: ImageCache, relay: _Relay,
) -> web.StreamResponse:
    """Stream the image (or ``byte_range`` of it) from a fill, as its bytes arrive.

    If the cache's disk fails, the bytes on disk are sent and the rest is relayed
    from upstream (docs/behaviour.md#a-full-or-failing-disk).
    """
    try:
        await fill.wait_started()
    except (UpstreamRefused, UpstreamError, FillAborted) as exc:
        outcome.settle("error")
        if not isinstance(exc, UpstreamRefused):
            LOG.warning("image %s: fill could not start: %s", meta.id, exc)
        return answer_for(exc)
    try:
        await fill.wait_inspected()  # an unsafe image is refused before any header
    except UnsafeImage as exc:
        outcome.settle("error")
        return answer_for(exc)

    try:
        fd = await fill.open_reader()  # this reader's own file offset
    except FillAborted:
        # The fill ended before this reader opened it: its committed copy, if any.
        hit = await cache.open_hit(meta) if fill.verified else None
        if hit is None:
            outcome.settle("error")
            return unavailable()
        fd = hit.fd
    try:
        response = image_response(meta, byte_range)
        await response.prepare(request)
    except BaseException:
        cache.release_fd(fd)
        raise
    start, stop = (byte_range.start, byte_range.stop) if byte_range else (0, fill.size)
    sent = start
    senders = request.app.get(SENDERS_KEY)
    # Readers of a fill send in batches of half their slice: many readers, few hops.
    batch = senders.slice() // 2 if senders is not None else 1

    async def readable(offset: int) -> int:
        nonlocal sent
        sent = offset  # send_fd asks only once everything before offset went out
        end = await fill.wait_readable(offset, stop, batch=batch)
        if end >= stop:
            outcome.settle()  # everything this response carries is readable: it counts now
        return end

    result = outcome.result
    on_sent = _FirstByte(metrics, result, "cache" if result == "hit" else "upstream")
    disk_failed = False
    try:
        try:
            await send_fd(request, fd, start, stop, readable=readable, on_sent=on_sent,
                          status=response.status)
            if fill.size == 0:
                await readable(0)
        except CacheDiskError as exc:
            LOG.warning("image %s: %s; relaying bytes %d-%d from upstream",
                        meta.id, exc, sent, stop - 1)
            disk_failed = True
        finally:  # before the relay: a full disk gets the partial's blocks back
            cache.release_fd(fd)
        if disk_failed:
            try:
                await _send_relayed(response, relay(sent, stop), stop - sent, outcome, on_sent)
            except FillAborted:  # the relay's own bytes were wrong: the fill's never got here
                metrics.integrity_failures.inc()
                raise
    except (FillAborted, FileShrank, UpstreamError, UpstreamRefused) as exc:
        LOG.error("image %s: aborting the response: %s", meta.id, exc)
        outcome.settle("error")
        abort(request)
        return response  # aiohttp's write_eof meets a closed transport: no clean end
    except ClientGone:
        return response
    await response.write_eof()
    return response


async def _send_relayed(
    response: web.StreamResponse, pieces: AsyncGenerator[bytes, None], remaining: int,
    outcome: _Outcome, on_sent: Callable[[int], None],
) -> None:
    """Write the relayed rest of a response; its last byte comes only once verified."""
    async with contextlib.aclosing(pieces):  # a client that leaves ends the upstream read
        async for piece in pieces:
            remaining -= len(piece)
            if remaining <= 0:
                outcome.settle()  # the relay verified everything this response carries
            try:
                await response.write(piece)
            except ConnectionError as exc:
                raise ClientGone(str(exc)) from exc
            on_sent(len(piece))


async def _send_hit(
    request: web.Request, asked: _Asked, hit: Hit, service: ImageService, outcome: _Outcome,
) -> web.StreamResponse:
    """Send a committed file (closing its descriptor when done)."""
    fd, entry, cache, metrics = hit.fd, hit.entry, service.cache, service.metrics
    try:
        meta, byte_range = asked.meta, asked.byte_range
        assert meta is not None
        outcome.settle("hit")
        LOG.debug("image %s: hit (%d bytes)", meta.id, meta.size or 0)
        size = meta.size or 0
        response = image_response(meta, byte_range)
        await response.prepare(request)
        if request.method != "HEAD":
            start, stop = (byte_range.start, byte_range.stop) if byte_range else (0, size)
            try:
                await send_fd(request, fd, start, stop, status=response.status,
                              on_sent=_FirstByte(metrics, "hit", "cache"))
            except ClientGone:
                return response
            except FileShrank as exc:
                LOG.error("image %s: aborting the response: %s", meta.id, exc)
                cache.report_damaged(entry, str(exc))
                outcome.result = "error"
                abort(request)
                return response
        await response.write_eof()
        return response
    finally:
        cache.release_fd(fd)


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
