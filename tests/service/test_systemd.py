"""The systemd unit is a tested file, and the daemon speaks sd_notify.

``systemd-analyze verify`` needs no running systemd: it loads the unit file as
PID 1 would and reports every key it cannot parse, but it exits 0 on mere
warnings, so any output fails the test. It also insists that ExecStart's binary
exists, so the check runs on a copy whose ExecStart names this checkout's
``edgecache`` script. A deliberately broken copy proves the tool really checks.

See docs/behaviour.md#running-it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecache.daemon.config import service_opts
from lab.edgecache import REPO_ROOT, EdgecacheProcess
from tests.support.faultyglance import FaultyGlance

UNIT = REPO_ROOT / "systemd" / "edgecache.service"


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (./scripts/test installs it)")
    return tool


def _verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("edgecache")
    assert script.exists(), f"{script}: install the checkout (pip install -e .)"
    text = re.sub(r"^ExecStart=/usr/bin/edgecache", f"ExecStart={script}", unit_text,
                  flags=re.MULTILINE)
    unit = tmp_path / "edgecache.service"
    unit.write_text(text)
    return subprocess.run(
        [_analyze(), "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )


def _unit_values() -> dict[str, str]:
    values = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)\s*(s|min)?", value)
    assert match, value
    return int(match[1]) * (60 if match[2] == "min" else 1)


def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    result = _verify(UNIT.read_text(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).strip() == ""


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("WatchdogSec=30s", "WatchdogSec=half a minute\nWachdog=1")
    result = _verify(broken, tmp_path)
    output = result.stdout + result.stderr
    assert "WatchdogSec" in output or "half a minute" in output
    assert "Wachdog" in output


def test_unit_agrees_with_the_daemon() -> None:
    unit = _unit_values()
    assert unit["Type"] == "notify"
    assert unit["NotifyAccess"] == "main"
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit["CacheDirectory"] == "edgecache"
    assert unit["StateDirectory"] == "edgecache"
    for hardening in ("ProtectSystem", "NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert hardening in unit
    assert 1 <= _seconds(unit["WatchdogSec"]) <= 120
    shutdown_timeout = {opt.name: opt.default for opt in service_opts}["shutdown_timeout"]
    # systemd must not SIGKILL a drain that is still within its own deadline.
    assert _seconds(unit["TimeoutStopSec"]) >= shutdown_timeout + 15


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in the abstract namespace, as systemd's NOTIFY_SOCKET is."""
    name = f"edgecache-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.bind("\0" + name)
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def _messages(sock: socket.socket, until: str, timeout: float = 10.0) -> list[str]:
    """Datagrams received until one contains ``until`` (included)."""
    received: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {until!r} within {timeout} s; got {received}")
        sock.settimeout(remaining)
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            continue
        received.append(message)
        if until in message.split("\n"):
            return received


def test_ready_watchdog_reload_and_stopping_reach_notify_socket(
    notify_socket: tuple[socket.socket, str], tmp_path: Path
) -> None:
    sock, address = notify_socket
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}  # a ping every 0.1 s
    with FaultyGlance() as glance, EdgecacheProcess(
        tmp_path / "edgecache", glance_endpoints=[glance.url], env=env
    ) as daemon:
        assert _messages(sock, "READY=1")[-1] == "READY=1"
        started = time.monotonic()
        pings = 0
        while pings < 5:
            pings += _messages(sock, "WATCHDOG=1").count("WATCHDOG=1")
        assert time.monotonic() - started < 2.0  # about every 0.1 s, not every WatchdogSec

        daemon.signal(signal.SIGHUP)
        reload = [m for m in _messages(sock, "READY=1") if m != "WATCHDOG=1"]
        assert reload[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert reload[-1] == "READY=1"

        daemon.signal(signal.SIGTERM)
        stopping = [m for m in _messages(sock, "STOPPING=1") if m != "WATCHDOG=1"]
        assert stopping == ["STOPPING=1"]
        assert daemon.wait() == 0


def test_no_watchdog_pings_for_another_pid(
    notify_socket: tuple[socket.socket, str], tmp_path: Path
) -> None:
    """``WATCHDOG_PID`` names the watched process; an inheriting child must stay quiet.

    A pinging daemon sends its first ``WATCHDOG=1`` on the loop turn after
    ``READY=1``, before it can handle a signal sent later: the datagrams of a reload
    and a stop, asked for after ``READY=1``, come after where pings would be.
    """
    sock, address = notify_socket
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": str(os.getpid())}
    with FaultyGlance() as glance, EdgecacheProcess(
        tmp_path / "edgecache", glance_endpoints=[glance.url], env=env
    ) as daemon:
        received = _messages(sock, "READY=1")
        daemon.signal(signal.SIGHUP)
        received += _messages(sock, "READY=1")
        daemon.signal(signal.SIGTERM)
        received += _messages(sock, "STOPPING=1")
        assert daemon.wait() == 0
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                received.append(sock.recv(4096).decode())
    assert any(message.startswith("RELOADING=1") for message in received)
    assert "WATCHDOG=1" not in received
