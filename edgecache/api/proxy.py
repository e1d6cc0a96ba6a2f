"""Passthrough: any request edgecache does not answer itself goes to Glance verbatim.

Both bodies stream (a multi-GiB snapshot upload is never buffered); hop-by-hop
headers stay on their own hop; a client's Content-Length is kept, because the
usual Glance deployments under uWSGI reject chunked uploads. Glance's answer
to an upload it refuses before reading the body is relayed as it came, even
when Glance resets the connection (upstream/upload.py); the path and query go
out as the client sent them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, MultiMapping

from edgecache.api.errors import REQUEST_ID_HEADER, REQUEST_ID_KEY, answer_for
from edgecache.api.streaming import abort
from edgecache.errors import UpstreamError
from edgecache.metrics import Metrics
from edgecache.upstream.glance import GlanceUpstream
from edgecache.upstream.upload import RelayedBody

LOG = logging.getLogger(__name__)

#: Answers up to this size (metadata, schemas, image lists) are read whole and sent with
#: their headers in one write: streamed, the headers went out in a segment of their own,
#: one more send here and one more wake-up of the client for every API call.
WHOLE_BODY_MAX = 256 * 1024

# RFC 9110 §7.6.1, plus Host (set for the upstream) and the proxy-only headers.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "host",
})


def end_to_end(headers: MultiMapping[str]) -> CIMultiDict[str]:
    """The headers that cross a proxy: hop-by-hop ones and those Connection names dropped."""
    source: CIMultiDict[str] = CIMultiDict(headers)
    listed = {
        token.strip().lower()
        for value in source.getall("connection", [])
        for token in value.split(",")
    }
    return CIMultiDict(
        (name, value) for name, value in source.items()
        if name.lower() not in HOP_BY_HOP and name.lower() not in listed
    )


async def forward(
    request: web.Request,
    upstream: GlanceUpstream,
    path_qs: str,
    *,
    metrics: Metrics | None = None,
    on_sent: Callable[[int], None] | None = None,
    proxy: str | None = None,
) -> tuple[web.StreamResponse, int]:
    """Relay ``request`` to ``path_qs`` upstream; returns the response and its status.

    ``metrics`` counts upstream failures; ``on_sent(n)`` sees each chunk of a 2xx
    body relayed (image bytes served without the cache are counted by the caller).
    ``proxy``: the HTTP proxy to send it through (image-data downloads only).
    """
    headers = end_to_end(request.headers)
    if REQUEST_ID_HEADER not in headers:
        headers[REQUEST_ID_HEADER] = request[REQUEST_ID_KEY]
    # A failed send of the body must not hide Glance's answer (upstream/upload.py).
    body = RelayedBody(request.content) if request.body_exists else None
    try:
        upstream_response = await upstream.request(
            request.method, path_qs, headers=headers, data=body, proxy=proxy
        )
    except UpstreamError as exc:
        LOG.warning("passthrough %s %s: %s", request.method, path_qs, exc)
        if metrics is not None:
            metrics.upstream_errors.labels(reason=exc.reason).inc()
        return answer_for(exc), 503
    async with upstream_response:
        length = upstream_response.content_length
        if request.method != "HEAD" and length is not None and length <= WHOLE_BODY_MAX:
            return await _answer_whole(request, upstream_response, path_qs, metrics, on_sent)
        response = web.StreamResponse(
            status=upstream_response.status, reason=upstream_response.reason
        )
        response.headers.update(end_to_end(upstream_response.headers))
        if length is not None:
            response.content_length = length
        await response.prepare(request)
        if request.method == "HEAD":
            return response, upstream_response.status
        try:
            async for chunk in upstream_response.content.iter_any():
                await response.write(chunk)
                if on_sent is not None and 200 <= upstream_response.status < 300:
                    on_sent(len(chunk))
        except (TimeoutError, aiohttp.ClientError) as exc:
            LOG.warning("passthrough %s %s broke off: %r", request.method, path_qs, exc)
            if metrics is not None and not isinstance(exc, ConnectionResetError):
                # (a write to a client that left raises a ConnectionResetError too)
                metrics.upstream_errors.labels(reason="body").inc()
            abort(request)
            return response, upstream_response.status
        await response.write_eof()
        return response, upstream_response.status


async def _answer_whole(
    request: web.Request,
    upstream_response: aiohttp.ClientResponse,
    path_qs: str,
    metrics: Metrics | None,
    on_sent: Callable[[int], None] | None,
) -> tuple[web.StreamResponse, int]:
    """A small answer, read whole first: nothing has gone to the client when Glance's
    body breaks off, so the client gets a clean 503 rather than a cut response."""
    status = upstream_response.status
    try:
        body = await upstream_response.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        LOG.warning("passthrough %s %s broke off: %r", request.method, path_qs, exc)
        if metrics is not None:
            metrics.upstream_errors.labels(reason="body").inc()
        return answer_for(UpstreamError(f"{request.method} {path_qs}: {exc!r}",
                                        reason="body")), 503
    if on_sent is not None and body and 200 <= status < 300:
        on_sent(len(body))
    response = web.Response(
        status=status, reason=upstream_response.reason, body=body,
        headers=end_to_end(upstream_response.headers),
    )
    return response, status
