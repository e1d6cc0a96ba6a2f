"""sd_notify and watchdog variables, log records naming their request, reloadable options."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from oslo_config import cfg

from edgecache.api.errors import REQUEST_ID
from edgecache.daemon import config, logs, sdnotify
from edgecache.errors import ConfigError


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}, 0.1),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}, None),  # someone else is watched
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout(
    environ: dict[str, str], interval: float | None
) -> None:
    assert sdnotify.watchdog_interval(environ=environ) == interval


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    name = f"edgecache-unit-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def test_notify_sends_one_datagram(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": address})
    assert sock.recv(100) == b"READY=1"


def test_notify_without_systemd_is_a_no_op(tmp_path: Path) -> None:
    assert not sdnotify.notify("READY=1", environ={})
    assert not sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "none")})


def _record(**extra: str) -> logging.LogRecord:
    record = logging.LogRecord("edgecache.test", logging.INFO, __file__, 1, "hello", (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_log_records_carry_the_current_request_id() -> None:
    stamp = logs.RequestIdFilter()
    outside = _record()
    assert stamp.filter(outside)
    assert getattr(outside, "request_id", None) == "-"
    token = REQUEST_ID.set("req-unit-1")
    try:
        inside = _record()
        stamp.filter(inside)
        assert getattr(inside, "request_id", None) == "req-unit-1"
        given = _record(request_id="req-explicit")  # the access logger names its own
        stamp.filter(given)
        assert getattr(given, "request_id", None) == "req-explicit"
    finally:
        REQUEST_ID.reset(token)


def test_log_setup_replaces_handlers_and_sets_the_level(tmp_path: Path) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        logs.setup(debug=True, log_file=str(tmp_path / "a.log"))
        handler = logs.setup(debug=False, log_file=str(tmp_path / "b.log"))
        assert root.handlers == [handler]
        assert root.level == logging.INFO
        logging.getLogger("edgecache.unit").info("to the file")
        handler.flush()
        line = (tmp_path / "b.log").read_text()
        assert " INFO edgecache.unit [-] to the file" in line
        logs.set_debug(True)
        assert root.level == logging.DEBUG
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def _conf_file(tmp_path: Path, max_size: str, debug: str, extra: str = "") -> str:
    path = tmp_path / "edgecache.conf"
    path.write_text(
        f"[DEFAULT]\nauth_strategy = noauth\ndebug = {debug}\n{extra}"
        f"[cache]\nmax_size = {max_size}\n"
        "[upstream]\nglance_endpoints = http://127.0.0.1:9292\n"
    )
    return str(path)


def test_service_options_and_their_defaults(tmp_path: Path) -> None:
    path = _conf_file(tmp_path, "1G", "false")
    settings = config.load(["--config-file", path], cfg.ConfigOpts())
    assert (settings.debug, settings.log_file, settings.shutdown_timeout) == (False, None, 60.0)
    path = _conf_file(tmp_path, "1G", "true", "log_file = /tmp/x.log\nshutdown_timeout = 5\n")
    settings = config.load(["--config-file", path], cfg.ConfigOpts())
    assert (settings.debug, settings.log_file, settings.shutdown_timeout) == (True, "/tmp/x.log", 5)


def test_reload_sees_mutable_options_only(tmp_path: Path) -> None:
    conf = cfg.ConfigOpts()
    path = _conf_file(tmp_path, "1G", "false")
    config.load(["--config-file", path], conf)
    assert config.live_settings(conf) == config.LiveSettings(max_size=1 << 30, debug=False)

    _conf_file(tmp_path, "512M", "true", "bind_port = 1234\n")
    conf.mutate_config_files()
    assert config.live_settings(conf) == config.LiveSettings(max_size=512 << 20, debug=True)
    assert conf.bind_port == 9292  # not mutable: a restart applies it

    _conf_file(tmp_path, "lots", "true")
    conf.mutate_config_files()
    with pytest.raises(ConfigError, match="option max_size: 'lots' is not a size"):
        config.live_settings(conf)
