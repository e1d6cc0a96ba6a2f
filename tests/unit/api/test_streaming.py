"""Counting what a response sent when it is cancelled mid-slice (edgecache/api/streaming.py)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiohttp import web

from edgecache.api import streaming


async def _cancel_mid_slice(
    sending: asyncio.Future[tuple[int, bool]], whole: tuple[int, int] = (8192, 200),
) -> tuple[dict[Any, Any], list[int]]:
    request: dict[Any, Any] = {}
    counted: list[int] = []
    awaiting = asyncio.create_task(streaming._counted_if_cancelled(
        sending, cast(web.Request, request), counted.append, whole=whole))
    await asyncio.sleep(0)
    awaiting.cancel()
    await asyncio.sleep(0)
    if not isinstance(sending, asyncio.Task):
        sending.set_result((4096, False))  # the sender thread returns after the cancel
    with pytest.raises(asyncio.CancelledError):
        await awaiting
    return request, counted


async def test_a_slice_a_thread_finishes_after_the_cancel_is_still_counted() -> None:
    request, counted = await _cancel_mid_slice(asyncio.get_running_loop().create_future())
    assert request[streaming.SENDFILE_BYTES_KEY] == 4096
    assert counted == [4096]
    assert streaming.SERVED_WHOLE_KEY not in request  # 4096 of the 8192 left: not served


async def test_a_cancelled_slice_that_sent_the_last_byte_marks_the_response_served() -> None:
    sending = asyncio.get_running_loop().create_future()
    request, _ = await _cancel_mid_slice(sending, whole=(4096, 206))
    assert request[streaming.SERVED_WHOLE_KEY] == 206


async def test_a_slice_the_loop_was_still_sending_is_stopped_and_counts_nothing() -> None:
    never = asyncio.get_running_loop().create_future()

    async def loop_send() -> tuple[int, bool]:
        await never
        return 1, False

    task = asyncio.ensure_future(loop_send())
    request, counted = await _cancel_mid_slice(task)
    assert task.cancelled()
    assert request[streaming.SENDFILE_BYTES_KEY] == 0
    assert counted == []
