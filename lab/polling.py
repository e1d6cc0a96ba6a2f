"""Waiting for a condition that another process makes true.

Servers, caches and logs change behind the caller's back; every wait in the
lab, the tests and the benchmarks polls through :func:`wait_until` (blocking
code) or :func:`wait_until_async` (on an event loop), so that a timeout always
names what was awaited.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["WaitTimeout", "wait_until", "wait_until_async"]


class WaitTimeout(AssertionError):
    """The condition did not hold in time.

    An AssertionError, so that a test that waits reads as a failed check, not
    as an error in the harness.
    """


def wait_until(
    predicate: Callable[[], bool], what: str, timeout: float = 30.0, interval: float = 0.05
) -> float:
    """Poll ``predicate`` until it holds; the seconds that took.

    Raises :class:`WaitTimeout` naming ``what`` after ``timeout`` seconds. An
    exception from ``predicate`` propagates at once (a server that died while
    being waited for should say so, not time out).
    """
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise WaitTimeout(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


async def wait_until_async(
    predicate: Callable[[], bool], what: str, within: float = 30.0, interval: float = 0.01
) -> float:
    """:func:`wait_until` for code on an event loop: the loop runs while it waits, up to
    ``within`` seconds.

    ``interval`` 0 only yields to the loop between checks (for work that a test
    drives by hand and that finishes in a thread, with no real time to wait for).
    """
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > within:
            raise WaitTimeout(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(interval)
    return time.monotonic() - started
