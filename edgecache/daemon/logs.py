"""Log set-up: every line of a request names its request id; the level changes live.

stdlib ``logging`` rather than oslo.log: oslo.log finds the request id in
oslo.context's thread-local store, and every request of this daemon runs on
the one event-loop thread, so concurrent requests would share (and overwrite)
it. A :class:`~contextvars.ContextVar` follows each asyncio task instead, and
tasks started inside a request (a fill) keep the id of the request that
started them. The option names (``[DEFAULT] debug``, ``log_file``) and the line
layout are oslo.log's, so operators' habits and log parsers carry over.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys

from edgecache.api.errors import REQUEST_ID

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
