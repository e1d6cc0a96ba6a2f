"""Log set-up: every line of a request names its request id; the level changes live.

stdlib ``logging`` rather than oslo.log: oslo.log finds the request id in
oslo.context's thread-local store, and every request of this daemon runs on
the one event-loop thread, so concurrent requests would share (and overwrite)
it. A :class:`~contextvars.ContextVar` follows each asyncio task instead, and
tasks started inside a request (a fill) keep the id of the request that
started them. The option names (``[DEFAULT] debug``, ``log_file``) and the line
layout are oslo.log's, so operators' habits and log parsers carry over.

Anyone who can reach the port can send malformed requests, so what they cost
in the log is bounded (docs/behaviour.md#logging): a request aiohttp's parser
refuses leaves its access line only (:class:`ClientErrorFilter` drops the
``aiohttp.server`` "Error handling request" record and its traceback, which
aiohttp's ``web_protocol.RequestHandler.handle_error`` logs at ERROR for every
``BadHttpMessage``), and :class:`RateLimitFilter` lets at most ``burst`` lines of
one kind through per ``interval``, then writes how many it held back.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import threading
import time
from collections.abc import Callable

from aiohttp.http_exceptions import HttpProcessingError

from edgecache.api.errors import REQUEST_ID

#: Lines of one kind let through per interval before the rest are counted only.
RATE_BURST = 10
#: The interval (s) of :data:`RATE_BURST`.
RATE_INTERVAL = 60.0
#: Kinds tracked at once; more share one bucket (kinds come from code, not input).
_MAX_KINDS = 256
#: Loggers whose records a client can cause: rate-limited by logger, level and message.
_CLIENT_FACING = ("aiohttp", "asyncio")

#: oslo.log's context format, with the request id where it puts its context.
FORMAT = "%(asctime)s.%(msecs)03d %(process)d %(levelname)s %(name)s [%(request_id)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class RequestIdFilter(logging.Filter):
    """Stamps ``record.request_id`` from the running task, unless the caller gave one.

    A filter on the handler, not on a logger: records of every library that
    propagate to the root handler get the id too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class ClientErrorFilter(logging.Filter):
    """Drops aiohttp's record of a request its parser refused (a client's error, not ours).

    The request still gets its 4xx and its access line, which names the reason;
    the traceback of the parser says nothing an operator can act on.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiohttp.") or record.exc_info is None:
            return True
        exc = record.exc_info[1]
        return not (isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 400) < 500)


class RateLimitFilter(logging.Filter):
    """At most ``burst`` lines of one kind per ``interval`` seconds; then one line
    saying how many were suppressed.

    A kind is a record's ``rate_key`` (the access log gives every 4xx one, by
    status and route), or, for the libraries that log what clients do (aiohttp,
    asyncio), its logger, level and message template. Other records pass as
    they are. The count of a kind is written when its interval is over, before
    the next line of any kind.
    """

    def __init__(
        self,
        emit: Callable[[logging.LogRecord], object],
        *,
        burst: int = RATE_BURST,
        interval: float = RATE_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._emit = emit
        self._burst = burst
        self._interval = interval
        self._monotonic = monotonic
        #: kind -> [window start, lines let through, lines suppressed]
        self._kinds: dict[str, list[float]] = {}
        self._swept = float("-inf")
        # Records come from the event loop and from executor threads (Keystone).
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        now = self._monotonic()
        kind = _kind_of(record)
        with self._lock:
            expired = self._take_expired(now)
            passes = kind is None or self._count(kind, now)
        for gone, start, suppressed in expired:
            self._emit(logging.makeLogRecord({
                "name": __name__,
                "levelno": logging.WARNING,
                "levelname": "WARNING",
                "msg": "suppressed %d log lines like %r in %.0f s",
                "args": (suppressed, gone, now - start),
                "request_id": "-",
            }))
        return passes

    def _count(self, kind: str, now: float) -> bool:
        if kind not in self._kinds and len(self._kinds) >= _MAX_KINDS:
            kind = "other"
        window = self._kinds.setdefault(kind, [now, 0, 0])
        if window[1] < self._burst:
            window[1] += 1
            return True
        window[2] += 1
        return False

    def _take_expired(self, now: float) -> list[tuple[str, float, int]]:
        """The kinds whose interval is over, removed, with what they suppressed."""
        if now - self._swept < 1.0:
            return []
        self._swept = now
        expired = [(kind, window) for kind, window in self._kinds.items()
                   if now - window[0] >= self._interval]
        for kind, _ in expired:
            del self._kinds[kind]
        return [(kind, window[0], int(window[2])) for kind, window in expired if window[2]]


def _kind_of(record: logging.LogRecord) -> str | None:
    key = getattr(record, "rate_key", None)
    if key is not None:
        return str(key)
    if record.name.split(".", 1)[0] in _CLIENT_FACING:
        return f"{record.name} {record.levelname} {record.msg}"
    return None


def setup(*, debug: bool = False, log_file: str | None = None) -> logging.Handler:
    """Send every log record to ``log_file`` (or stderr, i.e. the journal under systemd).

    A ``WatchedFileHandler`` reopens the file after logrotate moves it.
    Replaces handlers set up before, so calling it twice does not double lines.
    """
    handler: logging.Handler
    if log_file:
        handler = logging.handlers.WatchedFileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    handler.addFilter(RequestIdFilter())
    handler.addFilter(ClientErrorFilter())
    handler.addFilter(RateLimitFilter(handler.handle))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    set_debug(debug)
    return handler


def set_debug(debug: bool) -> None:
    """DEBUG or INFO for edgecache and the libraries under it (``[DEFAULT] debug``)."""
    logging.getLogger().setLevel(logging.DEBUG if debug else logging.INFO)
