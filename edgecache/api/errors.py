"""Error responses clients can parse, the one map from edgecache's errors to them, and the
request id every response carries.

glanceclient reads a JSON error body as an object whose values each have a
``message`` (glanceclient/exc.py ``from_response``); Glance names the request
``req-<id>`` and adopts the caller's ``X-OpenStack-Request-ID``.

:func:`answer_for` is the only place an :mod:`edgecache.errors` exception becomes
an HTTP answer: Glance's own refusals are relayed as Glance sent them, and every
failure to get an image's bytes is a 503 before any body, which Nova retries
(``nova/image/glance.py`` retries ``ServiceUnavailable`` up to
``[glance] num_retries``).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from contextvars import ContextVar
from http import HTTPStatus

from aiohttp import web

from edgecache.errors import (
    CertificateRefused,
    EdgecacheError,
    FillAborted,
    FillCoolingDown,
    NoSpace,
    NotFound,
    UnsafeImage,
    UpstreamError,
    UpstreamRefused,
)

REQUEST_ID_HEADER = "x-openstack-request-id"
#: The request being handled by the current task ("-" outside any request): every log
#: line shows it, and tasks a request starts (a fill) keep it.
REQUEST_ID: ContextVar[str] = ContextVar("edgecache_request_id", default="-")
#: Glance's max_request_id_length.
MAX_REQUEST_ID_LENGTH = 64
REQUEST_ID_KEY = web.RequestKey("edgecache.request_id", str)
#: which route answered, for per-route durations and the access log
ROUTE_KEY = web.RequestKey("edgecache.route", str)
#: how an image request was answered (hit, miss, coalesced, error), for the access log
CACHE_RESULT_KEY = web.RequestKey("edgecache.cache_result", str)

_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")


def error_response(status: int, message: str, **headers: str) -> web.Response:
    """A Glance-shaped JSON error, with a Content-Type and a message."""
    title = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body = {"error": {"code": status, "title": title, "message": message}}
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


def request_id_for(header: str | None) -> str:
    """Adopt the caller's request id (prefixed ``req-``) or make one."""
    if header:
        return header if header.startswith("req-") else f"req-{header}"
    return f"req-{uuid.uuid4()}"


def upstream_request_id(request: web.Request) -> str:
    """The request id that calls made on the caller's behalf carry to Glance.

    The caller's own id as sent, when it has one: Glance adds the ``req-`` prefix
    itself, and adding it here could take a 64-character id past Glance's
    ``max_request_id_length``. Otherwise the id edgecache made for the request.
    """
    own = request.headers.get(REQUEST_ID_HEADER)
    if own is not None and bad_request_id(own) is None:
        return own
    return request[REQUEST_ID_KEY]


def bad_request_id(header: str | None) -> str | None:
    """Why a caller's request id cannot be adopted, or None when it can."""
    if header is None:
        return None
    if len(header) > MAX_REQUEST_ID_LENGTH:
        return f"x-openstack-request-id is longer than {MAX_REQUEST_ID_LENGTH} characters"
    if not _PRINTABLE.match(header):
        return "x-openstack-request-id has characters outside printable ASCII"
    return None


def unavailable(message: str = "The image service is unavailable; try again later.",
                retry_after: float = 1.0) -> web.Response:
    """503 before any body, with when to come back."""
    return error_response(503, message, **{"Retry-After": str(max(1, math.ceil(retry_after)))})


def relay(refusal: UpstreamRefused) -> web.Response:
    """Glance's own refusal (401/403/404/204...), as Glance sent it."""
    headers = dict(refusal.headers)
    if refusal.status == 204:
        return web.Response(status=204, headers=headers)
    if "Content-Type" not in headers:
        headers["Content-Type"] = "text/plain"
    return web.Response(status=refusal.status, body=refusal.body, headers=headers)


def answer_for(exc: EdgecacheError) -> web.Response:
    """The HTTP answer to an edgecache error raised while serving a request."""
    if isinstance(exc, CertificateRefused):  # before UpstreamRefused: ours, not Glance's
        return error_response(403, exc.message)
    if isinstance(exc, UpstreamRefused):
        return relay(exc)
    if isinstance(exc, FillCoolingDown):
        return unavailable(str(exc), retry_after=exc.retry_after)
    if isinstance(exc, UnsafeImage):  # before FillAborted: the image's verdict, not a fault
        return error_response(403, f"Image {exc.image_id} is refused as unsafe to boot "
                                   f"({exc.reason}): {exc.detail}")
    if isinstance(exc, (UpstreamError, FillAborted)):
        return unavailable()
    if isinstance(exc, NoSpace):
        return error_response(409, str(exc))
    if isinstance(exc, NotFound):
        return error_response(404, str(exc))
    return error_response(500, "edgecache could not answer this request.")
