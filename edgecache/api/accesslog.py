"""One access line per request: method, path, status, bytes, duration, cache result.

aiohttp calls :class:`AccessLogger` once a response is finished, with its
duration. A handler cancelled because its client went away (or because the
drain deadline passed) never reaches that point, so the request middleware
writes that line itself with :func:`log_cancelled`.

Lines go to the ``edgecache.access`` logger, key=value so they grep and parse
easily, e.g.::

    GET /v2/images/0f5e.../file status=200 bytes=1073741998 duration=0.912 cache=hit
    route=image_data remote=127.0.0.1

What a client sends is cheap to log: a target longer than :data:`MAX_TARGET`
is cut, a request aiohttp's parser refused names the reason in a few words
(``error="Invalid header value char"``) instead of a traceback, and every
4xx line carries a ``rate_key`` (status and route) for daemon/logs.py's
rate limit.
"""

from __future__ import annotations

import logging

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, Response, StreamResponse

from edgecache.api.errors import CACHE_RESULT_KEY, REQUEST_ID_KEY, ROUTE_KEY
from edgecache.api.streaming import SENDFILE_BYTES_KEY, SERVED_WHOLE_KEY

ACCESS_LOG = logging.getLogger("edgecache.access")

#: Longest request target written (characters); longer ones are cut, with their length.
MAX_TARGET = 512
#: Longest parser reason written.
_MAX_REASON = 80


def _target(request: BaseRequest) -> str:
    target = str(request.rel_url)
    if len(target) <= MAX_TARGET:
        return target
    return f"{target[:MAX_TARGET]}...({len(target)} chars)"


def _line(request: BaseRequest, status: int, sent: int, duration: float, note: str) -> None:
    route = request.get(ROUTE_KEY, "-")
    extra: dict[str, object] = {"request_id": request.get(REQUEST_ID_KEY, "-")}
    if 400 <= status < 500:
        extra["rate_key"] = f"access {status} {route}"
    ACCESS_LOG.info(
        "%s %s status=%d bytes=%d duration=%.3f cache=%s route=%s remote=%s%s",
        request.method, _target(request), status, sent, duration,
        request.get(CACHE_RESULT_KEY, "-"), route, request.remote, note,
        extra=extra,
    )


def _parser_reason(request: BaseRequest, response: StreamResponse) -> str:
    """aiohttp's reason for a request its parser refused, in a few escaped words."""
    if ROUTE_KEY in request or REQUEST_ID_KEY in request or not isinstance(response, Response):
        return ""
    if not 400 <= response.status < 500 or response.text is None:
        return ""
    reason = response.text.strip().split("\n", 1)[0].rstrip(":")
    # !a (ascii): no control character or newline of the client's reaches the log.
    return f" error={reason[:_MAX_REASON]!a}"


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access-log hook, writing edgecache's line.

    ``bytes`` is what went on the wire: aiohttp's count (headers and body it
    wrote) plus the image bytes sent with sendfile.
    """

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        sent = response.body_length + request.get(SENDFILE_BYTES_KEY, 0)
        _line(request, response.status, sent, time, _parser_reason(request, response))

    @property
    def enabled(self) -> bool:
        return ACCESS_LOG.isEnabledFor(logging.INFO)


def log_cancelled(request: BaseRequest, duration: float) -> None:
    """The access line of a handler that was cancelled (499, as nginx writes it), or of
    one cancelled as its last byte went out: that response was served."""
    served = request.get(SERVED_WHOLE_KEY)
    sent = request.get(SENDFILE_BYTES_KEY, 0)
    if served is not None:
        _line(request, served, sent, duration, "")
    else:
        _line(request, 499, sent, duration, " cancelled")
