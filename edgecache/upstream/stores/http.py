"""``http://`` and ``https://`` store locations, read with the upstream's shared session."""

from __future__ import annotations

import aiohttp

from edgecache.errors import UpstreamError
from edgecache.model import ImageBody
from edgecache.upstream.body import store_body
from edgecache.upstream.stores.allow import StoreAllowlist, redact, refuse_redirect


class HttpStore:
    """``http://`` and ``https://`` URLs under ``allow``, read with the upstream's shared session.

    Redirects are not followed (a 3xx is a refusal): the place they name was
    never checked against ``allow``.
    """

    schemes: tuple[str, ...] = ("http", "https")

    def __init__(self, session: aiohttp.ClientSession, *, allow: StoreAllowlist) -> None:
        self._session = session
        self._allow = allow

    async def open(self, url: str, offset: int = 0) -> ImageBody:
        display = redact(url)
        target = self._allow.check(url, display)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            response = await self._session.get(target, headers=headers, allow_redirects=False)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(f"{display}: {exc!r}", reason="store") from exc
        refuse_redirect(display, response)
        return store_body(display, response, offset,
                          read_timeout=self._session.timeout.sock_read)

