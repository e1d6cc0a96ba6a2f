"""systemd's readiness protocol: one datagram to ``$NOTIFY_SOCKET`` per state.

Small enough to own (sd_notify(3) documents the wire format, sd_watchdog_enabled(3)
the watchdog variables); the PyPI wrappers are stale or need C builds.
"""

from __future__ import annotations

import os
import socket


def notify(state: str, *, environ: dict[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``READY=1``); False when not run under systemd."""
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        # Called from the event loop: a full receive queue must fail, not block it.
        sock.setblocking(False)
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:
            return False
    return True


def watchdog_interval(*, environ: dict[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``; None when off.

    ``$WATCHDOG_PID``, when set, names the process systemd watches; a child that
    inherited the environment must not ping on its parent's behalf.
    """
    env = environ if environ is not None else os.environ
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2 / 1_000_000 if usec > 0 else None
