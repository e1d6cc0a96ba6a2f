"""A reader's own upstream read of the rest of an image whose fill lost its disk.

When the cache's disk refuses a write (ENOSPC, EIO) the fill ends and nothing is
committed, but its readers must still get the whole image. Each one has sent
what was on disk; it reads the rest with its own upstream GET, with its own
credentials, from where the disk stopped. Memory stays at a chunk or two per
reader, and a slow reader slows no one. The hash goes on from the fill's state
at that offset, and the last byte the reader asked for goes out only once the
whole image has been verified, as for a fill (docs/behaviour.md#a-full-or-failing-disk).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from edgecache.errors import ChecksumMismatch, ShortBody, UpstreamError
from edgecache.model import ImageMeta, ImageSource


async def relay(
    source: ImageSource,
    meta: ImageMeta,
    headers: Mapping[str, str],
    *,
    size: int,
    hash_from: int,
    hasher: Any,
    send_from: int,
    send_to: int,
    max_resumes: int,
    sleep: Callable[[float], Awaitable[None]],
) -> AsyncGenerator[bytes, None]:
    """Yield bytes ``[send_from, send_to)`` of the image, read from ``source``.

    ``hasher`` holds the hash of the image's bytes before ``hash_from`` (None:
    nothing to verify but the size). The read starts at the lower of the two
    offsets; with a hasher it goes on to the image's end, and the last byte is
    yielded only once the digest is the one Glance recorded. A body that breaks
    off is resumed with a Range, up to ``max_resumes`` times. Raises ShortBody,
    ChecksumMismatch, UpstreamError or UpstreamRefused: the caller cuts its
    response, which so never ends cleanly with bytes that were not verified.
    """
    expected = meta.strongest_hash() if hasher is not None else None
    end = size if expected is not None else send_to
    pos = min(hash_from, send_from)
    held = b""
    loop = asyncio.get_running_loop()
    hashing: asyncio.Future[None] | None = None
    executor = ThreadPoolExecutor(1, thread_name_prefix=f"relay-{meta.id[:8]}")
    resumes = 0
    try:
        while pos < end:
            try:
                body = await source.open_image(meta.id, headers, offset=pos, meta=meta)
            except UpstreamError:
                if resumes >= max_resumes:
                    raise
                resumes += 1
                await sleep(min(0.1 * 2 ** resumes, 5.0))
                continue
            try:
                if body.content_length is not None and body.content_length != size - body.start:
                    raise UpstreamError(
                        f"image {meta.id}: upstream sends {body.content_length} bytes from "
                        f"offset {body.start}, its record says {size - body.start}",
                        reason="size",
                    )
                at = body.start
                if at > pos:
                    raise ShortBody(f"upstream resumed at {at}, expected {pos}")
                async for piece in body.chunks():
                    lo, at = at, at + len(piece)
                    if at <= pos:
                        continue  # a 200 to a ranged GET: bytes before pos are had
                    if at > size:
                        raise ShortBody(f"upstream sent more than the image's {size} bytes")
                    start, chunk, pos = pos, piece[pos - lo:], min(at, end)
                    chunk = chunk[: pos - start]
                    if expected is not None and pos > hash_from:
                        if hashing is not None:
                            await hashing
                        hashing = loop.run_in_executor(
                            executor, hasher.update, chunk[max(0, hash_from - start):]
                        )
                    first, last = max(start, send_from), min(pos, send_to)
                    if first < last:
                        out = chunk[first - start : last - start]
                        if last == send_to:  # the reader's last byte waits for the hash
                            out, held = out[:-1], out[-1:]
                        if out:
                            yield out
                    if pos >= end:
                        break
            except UpstreamError as exc:
                if exc.reason != "body" or resumes >= max_resumes:
                    raise
                resumes += 1
                continue
            finally:
                body.close()
            if pos < end:
                if resumes >= max_resumes:
                    raise ShortBody(f"upstream sent {pos} of the image's {size} bytes")
                resumes += 1
        if hashing is not None:
            await hashing
        if expected is not None:
            digest = hasher.hexdigest()
            if digest != expected[1]:
                raise ChecksumMismatch(
                    f"{expected[0]} of image {meta.id} is {digest}, Glance recorded {expected[1]}"
                )
        if held:
            yield held
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
