"""One access line per request: method, path, status, bytes, duration, cache result.

aiohttp calls :class:`AccessLogger` once a response is finished, with its
duration. A handler cancelled because its client went away (or because the
drain deadline passed) never reaches that point, so the request middleware
writes that line itself with :func:`log_cancelled`.

Lines go to the ``edgecache.access`` logger, key=value so they grep and parse
easily, e.g.::

    GET /v2/images/0f5e.../file status=200 bytes=1073741998 duration=0.912 cache=hit
    route=image_data remote=127.0.0.1
"""

from __future__ import annotations

import logging

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from edgecache.api.errors import CACHE_RESULT_KEY, REQUEST_ID_KEY, ROUTE_KEY
from edgecache.api.streaming import SENDFILE_BYTES_KEY

ACCESS_LOG = logging.getLogger("edgecache.access")


def _line(request: BaseRequest, status: int, sent: int, duration: float, note: str) -> None:
    ACCESS_LOG.info(
        "%s %s status=%d bytes=%d duration=%.3f cache=%s route=%s remote=%s%s",
        request.method, request.rel_url, status, sent, duration,
        request.get(CACHE_RESULT_KEY, "-"), request.get(ROUTE_KEY, "-"), request.remote, note,
        extra={"request_id": request.get(REQUEST_ID_KEY, "-")},
    )


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access-log hook, writing edgecache's line.

    ``bytes`` is what went on the wire: aiohttp's count (headers and body it
    wrote) plus the image bytes sent with sendfile.
    """

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        sent = response.body_length + request.get(SENDFILE_BYTES_KEY, 0)
        _line(request, response.status, sent, time, "")

    @property
    def enabled(self) -> bool:
        return ACCESS_LOG.isEnabledFor(logging.INFO)


def log_cancelled(request: BaseRequest, duration: float) -> None:
    """The access line of a handler that was cancelled (499, as nginx writes it)."""
    _line(request, 499, request.get(SENDFILE_BYTES_KEY, 0), duration, " cancelled")
