"""Glance's cache-management API, answered by edgecache for its own cache.

``glance cache-list|cache-queue|cache-delete|cache-clear``, openstacksdk and
``glance-cache-manage`` work against edgecache unchanged (docs/glance-wire.md,
Cache-management API and Legacy cache management). Glance's routes, shapes and
statuses:

=========================  ==================================================
``GET /v2/cache``          200 ``{"cached_images": [...], "queued_images": [...]}``
``PUT /v2/cache/{id}``     202; 404 unknown image, 400 not active
``DELETE /v2/cache/{id}``  204; 404 when neither cached nor queued
``DELETE /v2/cache``       204; ``x-image-cache-clear-target``: absent, ``""``
                           or ``both``, ``cache``, ``queue``; else 400
``POST /v2/cache/clean``   200 (stalled fills are abandoned)
``POST /v2/cache/prune``   200 ``{"total_files_pruned", "total_bytes_pruned"}``
legacy ``/v2/cached_images[/{id}]``, ``/v2/queued_images[/{id}]``: 200 + JSON
=========================  ==================================================

edgecache's own additions (``edgecache cache ...`` uses them):

* ``GET /v2/cache?detail=1`` adds ``prefetch`` (per queued image: state, bytes
  done/total), ``fills`` (every fill running), ``refused`` (images the format
  inspector refused, with the reason) and ``usage``. Plain
  ``GET /v2/cache`` keeps Glance's two keys only, because glanceclient prints
  every other top-level key's items as queued image ids. Cached entries carry
  extra fields (``pinned``, ``last_verified``, ``checksum``) in both.
* ``PUT|DELETE /v2/cache/{id}/pin``: pin (never evicted) or unpin. Pinning a
  cached image answers 200 and its entry; an image not cached yet is queued and
  pinned once cached (202). 409 when the pins would exceed ``max_size``.
* ``POST /v2/cache/{id}/verify`` and ``POST /v2/cache/verify`` (all): re-hash
  now; 200 with the verdicts; a corrupt image is evicted.

Every route is admin-only, like Glance's ``cache_*`` policies. With
``auth_strategy = noauth`` every caller is an administrator (Glance's noauth
context is admin too). In keystone mode :mod:`edgecache.api.authn` validates
the token before any handler runs; a caller whose validated roles include one
of ``[cache_api] admin_roles`` is an administrator (:func:`is_admin` is the
hook; an ``X-Roles`` header sent by the caller is never believed). Other
methods on these paths answer 405, as Glance's router does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from edgecache.api.authn import caller_roles
from edgecache.api.errors import (
    REQUEST_ID_HEADER,
    answer_for,
    error_response,
    upstream_request_id,
)
from edgecache.core.cache import ImageCache
from edgecache.core.views import DETECTED_FORMAT, verified_at
from edgecache.errors import NoSpace, UpstreamError, UpstreamRefused
from edgecache.model import Entry, ImageMeta, image_id_of
from edgecache.ops.prefetch import Prefetcher
from edgecache.ops.scrub import Scrubber, Verdict
from edgecache.upstream.glance import forwarded


@dataclass(frozen=True)
class CacheAdmin:
    """Everything the cache API works with (one per application)."""

    cache: ImageCache
    prefetcher: Prefetcher
    scrubber: Scrubber
    #: ``get(image_id, headers)``: Glance's record of the image for the caller
    lookup: Callable[[str, Mapping[str, str]], Awaitable[ImageMeta]]
    auth_strategy: str = "noauth"
    admin_roles: tuple[str, ...] = ("admin",)

    async def start(self) -> None:
        await self.prefetcher.start()
        await self.scrubber.start()

    async def stop(self) -> None:
        await self.scrubber.stop()
        await self.prefetcher.stop()


CACHE_ADMIN_KEY = web.AppKey("edgecache.cache_admin", CacheAdmin)

_PATHS = re.compile(r"^/v2/(?:cache|cached_images|queued_images)(?:/.*)?$")

Handler = Callable[[web.Request, CacheAdmin, str], Awaitable[web.StreamResponse]]


def handles(path: str) -> bool:
    """Whether a ``/v2/...`` path (prefix stripped, no query) is the cache API's."""
    return _PATHS.match(path) is not None


def is_admin(request: web.Request, admin: CacheAdmin) -> bool:
    """The authorization hook: noauth callers are admins; otherwise the token's roles decide."""
    if admin.auth_strategy == "noauth":
        return True
    # Validated roles (api.authn): the X-Roles *header* is whatever the client sent.
    roles = {r.lower() for r in caller_roles(request)}
    return any(role.lower() in roles for role in admin.admin_roles)


async def handle(request: web.Request, path: str) -> web.StreamResponse:
    """Answer a cache-API request for ``path`` (from ``/v2`` on)."""
    admin = request.app[CACHE_ADMIN_KEY]
    routes, image_id = _route(path.rstrip("/") if path != "/" else path)
    if routes is None:
        return error_response(404, "The resource could not be found.")
    handler = routes.get(request.method)
    if handler is None:
        return error_response(
            405, "The method is not allowed for this resource.",
            Allow=", ".join(sorted(routes)),
        )
    if not is_admin(request, admin):
        return error_response(403, "Access was denied to this resource.")
    if image_id is not None:
        canonical = image_id_of(image_id)
        if canonical is None:
            return error_response(404, f"Image {image_id[:64]} not found.")
        image_id = canonical
    return await handler(request, admin, image_id or "")


def _route(path: str) -> tuple[dict[str, Handler] | None, str | None]:
    parts = [unquote(p) for p in path.split("/")[2:]]  # after "", "v2"
    head, rest = parts[0], parts[1:]
    if head == "cache":
        if not rest:
            return {"GET": list_cache, "DELETE": clear_cache}, None
        if len(rest) == 1 and rest[0] == "clean":
            return {"POST": clean}, None
        if len(rest) == 1 and rest[0] == "prune":
            return {"POST": prune}, None
        if len(rest) == 1 and rest[0] == "verify":
            return {"POST": verify_all}, None
        if len(rest) == 2 and rest[0] == "nodes":
            return {"GET": nodes}, None
        if len(rest) == 1:
            return {"PUT": queue_image, "DELETE": delete_image}, rest[0]
        if len(rest) == 2 and rest[1] == "pin":
            return {"PUT": pin, "DELETE": unpin}, rest[0]
        if len(rest) == 2 and rest[1] == "verify":
            return {"POST": verify_one}, rest[0]
        return None, None
    if head == "cached_images":
        if not rest:
            return {"GET": legacy_list_cached, "DELETE": legacy_delete_all_cached}, None
        if len(rest) == 1:
            return {"DELETE": legacy_delete_cached}, rest[0]
        return None, None
    if head == "queued_images":
        if not rest:
            return {"GET": legacy_list_queued, "DELETE": legacy_delete_all_queued}, None
        if len(rest) == 1:
            return {"PUT": legacy_queue, "DELETE": legacy_delete_queued}, rest[0]
    return None, None


# -- answers ---------------------------------------------------------------------------


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(payload).encode(), content_type="application/json"
    )


def entry_json(entry: Entry) -> dict[str, Any]:
    """A cached image as Glance lists it (float epoch seconds), plus edgecache's fields."""
    return {
        "image_id": entry.image_id,
        "hits": entry.hits,
        "last_accessed": float(entry.last_access),
        "last_modified": float(entry.committed_at),
        "size": entry.size,
        "checksum": entry.checksum,
        "pinned": entry.pinned,
        "last_verified": float(verified_at(entry)),
        "detected_format": entry.extra.get(DETECTED_FORMAT),
    }


def _cached(admin: CacheAdmin) -> list[dict[str, Any]]:
    return [entry_json(entry) for entry in admin.cache.entries()]


def _verdict_json(verdict: Verdict) -> dict[str, Any]:
    return {
        "image_id": verdict.image_id,
        "result": verdict.result,
        "size": verdict.size,
        "detail": verdict.detail,
    }


async def _image_for_caller(
    request: web.Request, admin: CacheAdmin, image_id: str
) -> ImageMeta | web.Response:
    """Glance's record as the caller sees it, or the answer to give instead."""
    headers = forwarded(request.headers)
    headers[REQUEST_ID_HEADER] = upstream_request_id(request)
    try:
        meta = await admin.lookup(image_id, headers)
    except UpstreamRefused as refusal:
        # Glance's cache API words these itself ("Image <id> not found."); so do we.
        if refusal.status == 404:
            return error_response(404, f"Image {image_id} not found.")
        return error_response(refusal.status, f"Glance refused image {image_id}.")
    except UpstreamError as exc:
        return answer_for(exc)
    if meta.status != "active":
        return error_response(400, "Only images with status active can be targeted for queueing")
    return meta


# -- Glance's v2 cache API ---------------------------------------------------------------


async def list_cache(request: web.Request, admin: CacheAdmin, _: str) -> web.Response:
    body: dict[str, Any] = {
        "cached_images": _cached(admin),
        "queued_images": admin.prefetcher.queued(),
    }
    if request.query.get("detail", "").lower() in ("1", "true", "yes"):
        usage = admin.cache.usage()
        body["prefetch"] = admin.prefetcher.progress()
        body["failed"] = list(admin.prefetcher.failures)
        body["fills"] = [
            {
                "image_id": fill.image_id,
                "bytes_done": fill.bytes_done,
                "bytes_total": fill.bytes_total,
                "prefetch": fill.prefetch,
            }
            for fill in admin.cache.fills()
        ]
        body["refused"] = [  # the format inspector's refusals: never cached
            {
                "image_id": rejection.meta.id,
                "reason": rejection.reason,
                "detail": rejection.detail,
                "detected_format": rejection.detected,
                "disk_format": rejection.meta.disk_format,
                "at": rejection.at,
            }
            for rejection in admin.cache.rejections()
        ]
        body["usage"] = {
            "size": usage.size,
            "reserved": usage.reserved,
            "max_size": usage.max_size,
            "pinned": usage.pinned,
            "images": usage.images,
        }
    return _json(body)


async def queue_image(request: web.Request, admin: CacheAdmin, image_id: str) -> web.Response:
    meta = await _image_for_caller(request, admin, image_id)
    if isinstance(meta, web.Response):
        return meta
    await admin.prefetcher.enqueue(image_id, size=meta.size)
    return web.Response(status=202)


async def delete_image(request: web.Request, admin: CacheAdmin, image_id: str) -> web.Response:
    unqueued = await admin.prefetcher.remove(image_id)
    evicted = await admin.cache.purge(image_id)
    if not (unqueued or evicted):
        return error_response(404, f"Image {image_id} not found.")
    return web.Response(status=204)


async def clear_cache(request: web.Request, admin: CacheAdmin, _: str) -> web.Response:
    target = request.headers.get("x-image-cache-clear-target", "").strip().lower()
    if target not in ("", "both", "cache", "queue"):
        return error_response(
            400, "If provided 'x-image-cache-clear-target' must be 'cache', 'queue', "
            "'both' or empty string."
        )
    if target in ("", "both", "queue"):
        await admin.prefetcher.clear()
    if target in ("", "both", "cache"):
        await admin.cache.purge_all()
    return web.Response(status=204)


async def clean(request: web.Request, admin: CacheAdmin, _: str) -> web.Response:
    admin.cache.abandon_stalled()
    return web.Response(status=200)


async def prune(request: web.Request, admin: CacheAdmin, _: str) -> web.Response:
    """LRU down to max_size; the bound is kept on admission, so this is usually a no-op."""
    gone = await admin.cache.prune()
    return _json({
        "total_files_pruned": len(gone),
        "total_bytes_pruned": sum(entry.size for entry in gone),
    })


async def nodes(request: web.Request, admin: CacheAdmin, _: str) -> web.Response:
    """Glance answers 409 unless its cache is centralized; edgecache's is per host."""
    return error_response(409, "Centralized caching is not enabled: ask each edgecache.")


# -- edgecache's additions -------------------------------------------------------------


async def pin(request: web.Request, admin: CacheAdmin, image_id: str) -> web.Response:
    await admin.cache.wait_commit(image_id)  # a verified fill: pin what it commits
    promised = admin.prefetcher.pending_pin_bytes()
    try:
        entry = await admin.cache.pin(image_id, promised=promised)
    except NoSpace as exc:
        return answer_for(exc)
    if entry is not None:
        return _json(entry_json(entry))
    meta = await _image_for_caller(request, admin, image_id)
    if isinstance(meta, web.Response):
        return meta
    if meta.size is None:
        return error_response(400, f"Image {image_id} has no size: it cannot be cached.")
    if not admin.prefetcher.is_queued(image_id) or not _pending_pin(admin, image_id):
        try:
            admin.cache.check_pin_room(image_id, meta.size, promised=promised)
        except NoSpace as exc:
            return answer_for(exc)
    await admin.prefetcher.enqueue(image_id, size=meta.size, pin=True)
    return _json({"image_id": image_id, "pinned": False, "queued": True}, status=202)


def _pending_pin(admin: CacheAdmin, image_id: str) -> bool:
    return any(
        row["image_id"] == image_id and row["pin"] for row in admin.prefetcher.progress()
    )


async def unpin(request: web.Request, admin: CacheAdmin, image_id: str) -> web.Response:
    entry = await admin.cache.pin(image_id, pinned=False)
    queued = await admin.prefetcher.set_pin(image_id, False)
    if entry is not None:
        return _json(entry_json(entry))
    if queued:
        return _json({"image_id": image_id, "pinned": False, "queued": True})
    return error_response(404, f"Image {image_id} is neither cached nor queued.")


async def verify_one(request: web.Request, admin: CacheAdmin, image_id: str) -> web.Response:
    verdict = await admin.scrubber.verify(image_id)
    if verdict is None:
        return error_response(404, f"Image {image_id} is not cached.")
    return _json(_verdict_json(verdict))


async def verify_all(request: web.Request, admin: CacheAdmin, _: str) -> web.Response:
    verdicts = await admin.scrubber.verify_all()
    return _json({"images": [_verdict_json(v) for v in verdicts]})


# -- glance-cache-manage's legacy routes (200 and JSON, ``null`` for single items) ---------


async def legacy_list_cached(request: web.Request, admin: CacheAdmin, _: str) -> web.Response:
    return _json({"cached_images": _cached(admin)})


async def legacy_delete_cached(
    request: web.Request, admin: CacheAdmin, image_id: str
) -> web.Response:
    await admin.cache.purge(image_id)
    return _json(None)


async def legacy_delete_all_cached(
    request: web.Request, admin: CacheAdmin, _: str
) -> web.Response:
    return _json({"num_deleted": await admin.cache.purge_all()})


async def legacy_list_queued(request: web.Request, admin: CacheAdmin, _: str) -> web.Response:
    return _json({"queued_images": admin.prefetcher.queued()})


async def legacy_queue(request: web.Request, admin: CacheAdmin, image_id: str) -> web.Response:
    """Queue only, no existence check (as Glance); the worker gives up on unknown images."""
    await admin.prefetcher.enqueue(image_id)
    return _json(None)


async def legacy_delete_queued(
    request: web.Request, admin: CacheAdmin, image_id: str
) -> web.Response:
    await admin.prefetcher.remove(image_id)
    return _json(None)


async def legacy_delete_all_queued(
    request: web.Request, admin: CacheAdmin, _: str
) -> web.Response:
    return _json({"num_deleted": await admin.prefetcher.clear()})
