"""Which handler answers a request.

Glance clients may reach edgecache under a path prefix (``http://host/image/v2/...``,
docs/glance-wire.md#path-prefixes), so requests are matched on the part from ``/v2``
on, and the prefix is dropped before passthrough. Dot segments are refused
before anything is forwarded: ``..`` must never climb out of the upstream's
own path prefix.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edgecache.api import cache_api, health, images, proxy, versions
from edgecache.api.accesslog import log_cancelled
from edgecache.api.errors import (
    REQUEST_ID,
    REQUEST_ID_HEADER,
    REQUEST_ID_KEY,
    ROUTE_KEY,
    bad_request_id,
    error_response,
    request_id_for,
)
from edgecache.api.target import request_target
from edgecache.model import image_id_of

SERVICE_KEY = web.AppKey("edgecache.service", images.ImageService)

_V2 = re.compile(r"^(?P<prefix>(?:/[^/]+)*?)(?P<rest>/v2(?:/.*)?)$")
_IMAGE_FILE = re.compile(r"^/v2/images/(?P<image_id>[^/]+)/file/?$")
_IMAGE = re.compile(r"^/v2/images/(?P<image_id>[^/]+)/?$")
_VERSIONS = re.compile(r"^(?P<prefix>.*?)/versions/?$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def dispatch(request: web.Request) -> web.StreamResponse:
    """The single route: edgecache's own paths, image data, or passthrough."""
    service = request.app[SERVICE_KEY]
    if "#" in request.raw_path:
        # RFC 9112 §3.2: a request target has no fragment; yarl would drop it and
        # a different path would reach Glance than the one the client sent.
        return error_response(400, "A request target cannot carry a fragment.")
    raw_path, query = request_target(request)
    segments = unquote(raw_path).split("/")
    if any(segment in (".", "..") for segment in segments):
        return error_response(404, "The resource could not be found.")
    if raw_path == "/metrics" and request.method == "GET":
        request[ROUTE_KEY] = "metrics"
        return metrics_response(service)
    if raw_path == "/healthcheck" and request.method in ("GET", "HEAD"):
        request[ROUTE_KEY] = "healthcheck"
        return await health.healthcheck(request, service)

    match = _V2.match(raw_path)
    if match is None:
        versions_match = _VERSIONS.match(raw_path)
        if request.method in ("GET", "HEAD"):
            request[ROUTE_KEY] = "versions"
            if versions_match is not None:
                return versions.versions_response(
                    request, versions_match["prefix"], explicit=True
                )
            return versions.versions_response(request, raw_path.rstrip("/"), explicit=False)
        request[ROUTE_KEY] = "passthrough"
        response, _ = await _forward(request, service, raw_path + (f"?{query}" if query else ""))
        return response

    rest = match["rest"]
    path_qs = rest + (f"?{query}" if query else "")
    if cache_api.handles(rest):
        request[ROUTE_KEY] = "cache_api"
        return await cache_api.handle(request, rest)
    image_file = _IMAGE_FILE.match(rest)
    if image_file is not None and request.method in ("GET", "HEAD"):
        request[ROUTE_KEY] = "image_data"
        return await images.image_data(request, service, unquote(image_file["image_id"]), path_qs)
    request[ROUTE_KEY] = "passthrough"
    response, status = await _forward(request, service, path_qs)
    image = _IMAGE.match(rest)
    if image is not None and request.method == "DELETE" and status == 204:
        # The image is gone upstream (Glance's own cache purges on this too).
        image_id = image_id_of(unquote(image["image_id"]))
        if image_id is not None:
            service.metadata.forget(image_id)
            service.cache.evict_soon(image_id)
    return response


async def _forward(
    request: web.Request, service: images.ImageService, path_qs: str
) -> tuple[web.StreamResponse, int]:
    return await proxy.forward(request, service.upstream, path_qs)


def metrics_response(service: images.ImageService) -> web.Response:
    body = generate_latest(service.metrics.registry)
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id in and out (and on every log line), the duration of every request by route."""
    started = time.monotonic()
    caller_id = request.headers.get(REQUEST_ID_HEADER)
    problem = bad_request_id(caller_id)
    request[REQUEST_ID_KEY] = request_id_for(None if problem else caller_id)
    # Tasks started from here (a fill) copy the context: their lines keep this id.
    token = REQUEST_ID.set(request[REQUEST_ID_KEY])
    try:
        if problem is not None:
            request[ROUTE_KEY] = "rejected"
            return error_response(431, problem)
        return await handler(request)
    except asyncio.CancelledError:
        log_cancelled(request, time.monotonic() - started)  # aiohttp logs no access line
        raise
    finally:
        REQUEST_ID.reset(token)
        route = request.get(ROUTE_KEY, "unknown")
        request.app[SERVICE_KEY].metrics.request_duration.labels(route=route).observe(
            time.monotonic() - started
        )


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response names its request (Glance does the same)."""
    if REQUEST_ID_HEADER not in response.headers and REQUEST_ID_KEY in request:
        response.headers[REQUEST_ID_HEADER] = request[REQUEST_ID_KEY]


def setup_routes(app: web.Application) -> None:
    app.middlewares.append(request_context)
    app.on_response_prepare.append(add_request_id)
    app.router.add_route("*", "/{tail:.*}", dispatch)
