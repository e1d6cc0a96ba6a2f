"""Concurrent identical calls share one: Glance's record, and its download verdict.

The call runs as a task of its own, so a caller that goes away does not cancel
what the other callers are waiting on. A finished call is never shared: the
next caller starts a new one (a refusal must not be reused).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """At most one call per key in flight; everyone asking meanwhile awaits it."""

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[V]] = {}

    async def run(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        pending = self._running.get(key)
        if pending is None or pending.done():
            pending = asyncio.ensure_future(call())
            self._running[key] = pending
            pending.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(pending)

    def _forget(self, key: K, done: asyncio.Future[V]) -> None:
        if self._running.get(key) is done:
            del self._running[key]
