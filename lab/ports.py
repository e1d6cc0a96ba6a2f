"""Picking a loopback TCP port for a server the lab starts.

The kernel picks a port that is free at that moment; a server started a little
later can still lose it to someone else, so :func:`on_free_port` retries a start
that failed with :class:`PortTaken`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

__all__ = ["LOOPBACK", "PortTaken", "free_port", "on_free_port"]

#: every server the lab starts listens here, and only here
LOOPBACK = "127.0.0.1"


class PortTaken(RuntimeError):
    """A server could not bind its port: someone took it after it was picked."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def on_free_port(port: int, start: Callable[[int], None], attempts: int = 3) -> int:
    """Run ``start(port)``; with ``port == 0``, on fresh free ports until one binds.

    A fixed port is tried once: losing it is the caller's problem to report.
    Returns the port that ``start`` succeeded on.
    """
    if port:
        start(port)
        return port
    for attempt in range(attempts):
        chosen = free_port()
        try:
            start(chosen)
            return chosen
        except PortTaken:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
