"""Waiting for a condition that another process makes true.

Servers, caches and logs change behind the caller's back; every wait in the
lab, the tests and the benchmarks polls through :func:`wait_until` so that a
timeout always names what was awaited.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["WaitTimeout", "wait_until"]


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
