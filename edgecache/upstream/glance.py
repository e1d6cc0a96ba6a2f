"""The Glance v2 API as an upstream: metadata, image data and plain passthrough.

One shared ``aiohttp.ClientSession`` with explicit timeouts. The caller's own
credentials (``X-Auth-Token``, ``X-Service-Token``) and request id travel with
every request, so Glance keeps deciding who may see what.

An endpoint that cannot be reached is rested (tried last) for an exponentially
growing time, measured on the injected :class:`~edgecache.clock.Clock`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import weakref
from collections.abc import Callable, Mapping
from types import TracebackType

import aiohttp
from yarl import URL

from edgecache.backoff import Backoff
from edgecache.clock import SYSTEM, Clock
from edgecache.errors import UpstreamError, UpstreamRefused
from edgecache.model import ImageMeta
from edgecache.upstream.body import HttpBody, content_range_start

LOG = logging.getLogger(__name__)

#: Headers of the caller that Glance needs to see on calls made on its behalf.
FORWARDED_HEADERS = ("x-auth-token", "x-service-token", "x-openstack-request-id", "x-roles")

#: Answers to the ``bytes=0-0`` download probe that are Glance's "no": its policy check
#: (403), authentication (401) and visibility (404) come before anything about the data,
#: so every other verdict (206, 200, 204, 416, a 400 from a store that cannot seek, ...)
#: means ``download_image`` let the call through (glance/api/v2/image_data.py download).
_DOWNLOAD_REFUSED = frozenset({401, 403, 404})
#: Upstream statuses relayed to the caller verbatim: Glance's own verdicts.
_RELAYED_STATUSES = frozenset({204, 400, 401, 403, 404, 405, 409, 410, 413, 415, 416, 431})

# Big reads keep the per-chunk overhead (one executor hop per write) low; the
# StreamReader pauses the socket at twice this size, which bounds memory.
_READ_BUFSIZE = 1 << 20
#: Statuses that mean "this Glance cannot answer now", not a verdict on the request.
_UNAVAILABLE = frozenset({500, 502, 503, 504})
#: Longest rest for an endpoint that keeps refusing connections.
_MAX_BACKOFF = 60.0
#: Rest after the n-th failure in a row of one endpoint: 2, 4, 8, ... s, at most a minute.
ENDPOINT_BACKOFF = Backoff(base=2.0, factor=2.0, cap=_MAX_BACKOFF)


def forwarded(headers: Mapping[str, str]) -> dict[str, str]:
    """The subset of a caller's headers that calls on its behalf carry."""
    return {name: value for name in FORWARDED_HEADERS if (value := headers.get(name)) is not None}


class GlanceUpstream:
    """Client of one or more Glance API endpoints (the first that answers is used)."""

    def __init__(
        self,
        endpoints: tuple[str, ...],
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
        http_proxy: str | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one Glance endpoint is required")
        self.endpoints = endpoints
        #: image-data downloads go through this proxy (a P2P agent, say); nothing else does
        self.http_proxy = http_proxy
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=read_timeout
        )
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._uploads: aiohttp.ClientSession | None = None
        self._down_until: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        #: the endpoint each response still in use came from (see _rest_for)
        self._senders: weakref.WeakKeyDictionary[aiohttp.ClientResponse, str] = (
            weakref.WeakKeyDictionary()
        )

    async def __aenter__(self) -> GlanceUpstream:
        self._session = self._new_session(force_close=False)
        # Requests with a body never share a connection, neither before nor
        # after: Glance may answer one (a refused upload) without reading its
        # body and then drop the connection, so a pooled connection could be
        # stale, and a body that cannot be replayed would fail on it.
        self._uploads = self._new_session(force_close=True)
        return self

    def _new_session(self, *, force_close: bool) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            timeout=self._timeout,
            auto_decompress=False,
            read_bufsize=_READ_BUFSIZE,
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, force_close=force_close),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._uploads is not None:
            await self._uploads.close()
            self._uploads = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("GlanceUpstream used outside 'async with'")
        return self._session

    def candidates(self) -> list[str]:
        """Endpoints in the order to try: configured order, those in backoff last."""
        now = self._clock.monotonic()
        healthy = [e for e in self.endpoints if self._down_until.get(e, 0.0) <= now]
        resting = [e for e in self.endpoints if e not in healthy]
        return healthy + resting

    def _mark_down(self, endpoint: str) -> None:
        failures = self._failures.get(endpoint, 0) + 1
        self._failures[endpoint] = failures
        self._down_until[endpoint] = self._clock.monotonic() + ENDPOINT_BACKOFF.delay(failures)

    def _rest_for(self, response: aiohttp.ClientResponse) -> Callable[[], None]:
        """What to do when this response's body breaks off: rest the endpoint that sent it,
        so the fill's resume asks another one first (a body stalled past read_timeout
        says the endpoint is hung). The sender is the endpoint :meth:`request` sent it
        to: ``response.url`` cannot name it, yarl lower-cases the host and drops a
        default port, and one endpoint's URL may begin another's."""
        endpoint = self._senders.get(response)
        return (lambda: self._mark_down(endpoint)) if endpoint is not None else (lambda: None)

    def _mark_up(self, endpoint: str) -> None:
        self._failures.pop(endpoint, None)
        self._down_until.pop(endpoint, None)

    async def request(
        self,
        method: str,
        path_qs: str,
        *,
        headers: Mapping[str, str],
        data: object = None,
        proxy: str | None = None,
    ) -> aiohttp.ClientResponse:
        """Send one request to the first endpoint that takes it; the body is unread.

        An endpoint that refuses the connection, or does not connect in time, is
        skipped (and rested with exponential backoff); no request body has been
        read from the caller by then, so the next endpoint gets it whole. An
        endpoint answering 500/502/503/504 to a request without a body is
        skipped the same way while another endpoint remains; the last one's
        answer is returned as it is. With
        ``proxy``, a proxy that cannot be reached is bypassed: the same endpoint
        is asked directly (the proxy is an optimisation, Glance is the source).
        """
        error: UpstreamError | None = None
        candidates = self.candidates()
        session = self.session if data is None or self._uploads is None else self._uploads
        for endpoint in candidates:
            # encoded=True: the path and query go out byte for byte as given
            # (yarl would otherwise decode %3F in a query to "?").
            url = URL(endpoint + path_qs, encoded=True)
            try:
                try:
                    response = await session.request(
                        method,
                        url,
                        headers=dict(headers),
                        data=data,
                        allow_redirects=False,
                        proxy=proxy,
                    )
                except aiohttp.ClientProxyConnectionError as exc:
                    LOG.warning("proxy %s unreachable (%s); asking %s directly",
                                proxy, exc, endpoint)
                    response = await session.request(
                        method,
                        url,
                        headers=dict(headers),
                        data=data,
                        allow_redirects=False,
                    )
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                self._mark_down(endpoint)
                error = UpstreamError(f"{method} {path_qs} at {endpoint}: {exc}", reason="connect")
                continue
            except TimeoutError as exc:
                # Connected, but no answer within read_timeout: a hung endpoint. Rest
                # it; a request without a body can go to the next one.
                self._mark_down(endpoint)
                error = UpstreamError(
                    f"{method} {path_qs} at {endpoint}: no answer in time", reason="timeout"
                )
                if data is None and endpoint != candidates[-1]:
                    LOG.warning("%s gave no answer to %s %s in time; trying the next endpoint",
                                endpoint, method, path_qs)
                    continue
                raise error from exc
            except aiohttp.ClientError as exc:
                raise UpstreamError(f"{method} {path_qs}: {exc}", reason="connect") from exc
            if (
                response.status in _UNAVAILABLE
                and data is None
                and endpoint != candidates[-1]
            ):
                # This Glance cannot serve now; another may. Only requests without
                # a body are replayed: a streamed upload cannot be read twice.
                response.close()
                self._mark_down(endpoint)
                error = UpstreamError(
                    f"{method} {path_qs} at {endpoint}: {response.status}", reason="status"
                )
                continue
            self._mark_up(endpoint)
            self._senders[response] = endpoint
            return response
        assert error is not None
        raise error

    async def image_metadata(self, image_id: str, headers: Mapping[str, str]) -> ImageMeta:
        """``GET /v2/images/{id}`` as the caller: Glance's verdict on visibility and state."""
        response = await self.request("GET", f"/v2/images/{image_id}", headers=headers)
        async with response:
            try:
                body = await response.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise UpstreamError(f"image {image_id}: {exc!r}", reason="body") from exc
            if response.status == 200:
                try:
                    return ImageMeta.from_glance(json.loads(body))
                except (ValueError, KeyError, TypeError) as exc:
                    raise UpstreamError(
                        f"image {image_id}: unreadable metadata", reason="status"
                    ) from exc
            raise _refusal(response, body)

    async def may_download(self, image_id: str, headers: Mapping[str, str]) -> None:
        """Glance's ``download_image`` verdict for this caller: returns, or raises its refusal.

        ``GET /v2/images/{id}/file`` with ``Range: bytes=0-0``, straight to Glance
        (never through ``http_proxy``: the verdict is Glance's). Refused: 401, 403,
        404, relayed as Glance sent them. No verdict: 500/502/503/504 (UpstreamError).
        Anything else means the policy let the call through: a 206 (the first byte),
        a 200 (a Glance that ignores Range), a 204 (no data yet), a 416 (a 0-byte
        image has no byte 0), a 400 (a store that cannot read ranges). The body is
        not read, except an answer of at most one byte, whose connection can then
        go back to the pool.
        """
        response = await self.request(
            "GET", f"/v2/images/{image_id}/file", headers={**headers, "Range": "bytes=0-0"}
        )
        status = response.status
        if 200 <= status < 300 or (400 <= status < 500 and status not in _DOWNLOAD_REFUSED):
            length = response.content_length
            if length is not None and length <= 1:
                # The verdict is in the status line; a failed read just drops the connection.
                with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                    await response.read()
            response.close()  # unread: never the whole image of a Glance that ignored Range
            return
        async with response:
            try:
                body = await response.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise UpstreamError(f"image {image_id}: {exc!r}", reason="body") from exc
            raise _refusal(response, body)

    async def open_image(
        self,
        image_id: str,
        headers: Mapping[str, str],
        *,
        offset: int = 0,
        meta: ImageMeta | None = None,
    ) -> HttpBody:
        """``GET /v2/images/{id}/file``, from ``offset`` on with a Range when resuming.

        A 200 comes back open (starting at 0, even when a Range was asked: the
        fill drops what it already has); a 206 only if it starts at ``offset``.
        """
        if offset:
            headers = {**headers, "Range": f"bytes={offset}-"}
        response = await self.request(
            "GET", f"/v2/images/{image_id}/file", headers=headers, proxy=self.http_proxy
        )
        rest = self._rest_for(response)
        if response.status == 200:
            return HttpBody(response, on_break=rest, read_timeout=self._timeout.sock_read)
        if response.status == 206 and offset:
            start = content_range_start(response.headers.get("Content-Range", ""))
            if start == offset:
                return HttpBody(response, start=offset, on_break=rest,
                                read_timeout=self._timeout.sock_read)
            response.close()
            raise UpstreamError(
                f"image {image_id}: asked for bytes {offset}-, got Content-Range "
                f"{response.headers.get('Content-Range')!r}",
                reason="status",
            )
        async with response:
            try:
                body = await response.read()
            except (TimeoutError, aiohttp.ClientError):
                body = b""
            raise _refusal(response, body)


def _refusal(response: aiohttp.ClientResponse, body: bytes) -> Exception:
    """Glance's own verdicts go back to the caller; anything else means 'try later'."""
    if response.status in _RELAYED_STATUSES:
        keep = {
            name: value
            for name in ("Content-Type", "WWW-Authenticate", "x-openstack-request-id")
            if (value := response.headers.get(name)) is not None
        }
        return UpstreamRefused(response.status, body, keep)
    return UpstreamError(f"upstream answered {response.status}", reason="status")
