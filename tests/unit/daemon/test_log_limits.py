"""What a client can make the daemon write: one short line, rate-limited (daemon/logs.py)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from aiohttp.http_exceptions import BadHttpMessage

from edgecache.daemon import logs


class Ticks:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _record(name: str, msg: str, *, rate_key: str | None = None,
            exc: BaseException | None = None) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": name, "msg": msg, "levelno": logging.INFO,
                                    "levelname": "INFO"})
    if rate_key is not None:
        record.rate_key = rate_key
    if exc is not None:
        try:
            raise exc
        except BaseException:
            record.exc_info = sys.exc_info()
    return record


def test_a_kind_passes_burst_times_per_interval_then_its_count_is_written() -> None:
    ticks = Ticks()
    summaries: list[logging.LogRecord] = []
    limit = logs.RateLimitFilter(summaries.append, burst=3, interval=10.0, monotonic=ticks)

    passed = [limit.filter(_record("edgecache.access", "x", rate_key="access 404 -"))
              for _ in range(50)]
    other = limit.filter(_record("edgecache.access", "y", rate_key="access 400 -"))
    assert passed == [True] * 3 + [False] * 47
    assert other is True
    assert summaries == []
    # records without a kind always pass (a commit line, a warning of edgecache's own)
    assert all(limit.filter(_record("edgecache.core.cache", "committed")) for _ in range(50))

    ticks.now += 10.5
    assert limit.filter(_record("edgecache.access", "x", rate_key="access 404 -")) is True
    assert [s.getMessage() for s in summaries] == [
        "suppressed 47 log lines like 'access 404 -' in 10 s"
    ]
    assert summaries[0].levelno == logging.WARNING


def test_library_records_are_limited_by_logger_and_message() -> None:
    limit = logs.RateLimitFilter(lambda record: None, burst=2, interval=60.0, monotonic=Ticks())
    results = [limit.filter(_record("asyncio", "socket.send() raised exception."))
               for _ in range(5)]
    assert results == [True, True, False, False, False]


def test_parser_refusals_leave_no_aiohttp_record() -> None:
    refuse = logs.ClientErrorFilter()
    assert not refuse.filter(_record("aiohttp.server", "Error handling request from %s",
                                     exc=BadHttpMessage("Invalid header value char")))
    assert refuse.filter(_record("aiohttp.server", "Unhandled exception",
                                 exc=RuntimeError("a bug of ours keeps its traceback")))
    assert refuse.filter(_record("edgecache.api.proxy", "passthrough broke off"))


def test_setup_puts_the_limits_on_the_handler(tmp_path: Path) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        handler = logs.setup(log_file=str(tmp_path / "a.log"))
        kinds = {type(f) for f in handler.filters}
        assert {logs.ClientErrorFilter, logs.RateLimitFilter} <= kinds
        server = logging.getLogger("aiohttp.server")
        for _ in range(3):
            try:
                raise BadHttpMessage("Bad status line")
            except BadHttpMessage:
                server.exception("Error handling request from %s", "127.0.0.1")
        for _ in range(logs.RATE_BURST + 20):
            logging.getLogger("edgecache.access").info(
                "UNKNOWN / status=400", extra={"rate_key": "access 400 -"})
        handler.flush()
        text = (tmp_path / "a.log").read_text()
        assert "Traceback" not in text and "aiohttp.server" not in text
        assert text.count("status=400") == logs.RATE_BURST
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
