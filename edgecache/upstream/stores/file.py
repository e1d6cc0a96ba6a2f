"""``file://`` store locations: a Glance file store mounted on this host (NFS, say)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from edgecache.errors import NotFound, UpstreamError
from edgecache.model import ImageBody
from edgecache.upstream.stores.allow import StoreAllowlist

#: bytes per read of a file-store object (one thread hop each)
FILE_PIECE = 1 << 20


class FileBody:
    """A file-store object read in :data:`FILE_PIECE` pieces from an offset, in a thread."""

    def __init__(self, fd: int, start: int, length: int) -> None:
        self._fd: int | None = fd
        self.start = start
        self.content_length: int | None = length

    async def chunks(self) -> AsyncIterator[bytes]:
        position = self.start
        while self._fd is not None:
            try:
                piece = await asyncio.to_thread(os.pread, self._fd, FILE_PIECE, position)
            except OSError as exc:
                # "body": the fill resumes from what it has (docs/behaviour.md#upstream-faults)
                raise UpstreamError(f"store file read failed: {exc}", reason="body") from exc
            if not piece:
                return
            position += len(piece)
            yield piece

    def close(self) -> None:
        """Close the file in a thread: on NFS a close flushes and may wait on the server."""
        fd, self._fd = self._fd, None
        if fd is not None:
            _ = asyncio.get_running_loop().run_in_executor(None, os.close, fd)


class FileStore:
    """``file://`` URLs: a Glance file store mounted on this host (NFS, say).

    Only files whose real path (symlinks resolved) lies under a ``file://``
    prefix of ``allow`` are opened.
    """

    schemes: tuple[str, ...] = ("file",)

    def __init__(self, *, allow: StoreAllowlist) -> None:
        self._allow = allow

    async def open(self, url: str, offset: int = 0) -> ImageBody:
        path = await asyncio.to_thread(self._allow.check_file, url, url)
        try:
            # open, fstat and close in a thread: on NFS each may wait on the server;
            # O_NOFOLLOW: the checked real path must not turn into a symlink meanwhile
            fd, size = await asyncio.to_thread(_open_sized, path)
        except FileNotFoundError as exc:
            raise NotFound(f"{url}: no such file") from exc
        except OSError as exc:
            raise UpstreamError(f"{url}: {exc}", reason="store") from exc
        if offset > size:
            await asyncio.to_thread(os.close, fd)
            raise UpstreamError(f"{url}: offset {offset} beyond its {size} bytes",
                                reason="store")
        return FileBody(fd, offset, size - offset)


def _open_sized(path: str) -> tuple[int, int]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        return fd, os.fstat(fd).st_size
    except BaseException:
        os.close(fd)
        raise
