"""``http://`` and ``https://`` store locations, read with the upstream's shared session."""

from __future__ import annotations

import aiohttp

from edgecache.errors import UpstreamError
from edgecache.model import ImageBody
from edgecache.upstream.body import store_body


class HttpStore:
    """``http://`` and ``https://`` URLs, read with the upstream's shared session."""

    schemes: tuple[str, ...] = ("http", "https")

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def open(self, url: str, offset: int = 0) -> ImageBody:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            response = await self._session.get(url, headers=headers, allow_redirects=True)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(f"{url}: {exc!r}", reason="store") from exc
        return store_body(url, response, offset)
