"""The system clock's wait: a cancel always ends it, even as the event is set."""

from __future__ import annotations

import asyncio

import pytest

from edgecache.clock import SYSTEM


@pytest.mark.parametrize("seconds", [10.0, None])
async def test_a_cancel_in_the_same_turn_as_the_event_still_cancels(seconds: float | None) -> None:
    """A prefetch worker stopped just as another worker wakes it must stop: on Python
    3.11, asyncio.wait_for returned the event instead and the worker waited on for ever."""
    event = asyncio.Event()
    waiting = asyncio.create_task(SYSTEM.wait(event, seconds))
    await asyncio.sleep(0)  # it waits on the event
    event.set()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_the_wait_reports_the_event_or_the_timeout() -> None:
    event = asyncio.Event()
    assert await SYSTEM.wait(event, 0.01) is False
    event.set()
    assert await SYSTEM.wait(event, 10.0) is True
    assert await SYSTEM.wait(event, None) is True
