"""The request target as the client sent it: one reading for every handler and middleware.

``request.rel_url`` is yarl's normalised form (``%3F`` in a query decoded to
``?``, ``%7E`` to ``~``). Glance must see the bytes the client sent, and the
token check must judge the very path the router serves: both read it here.
"""

from __future__ import annotations

from aiohttp import web


def request_target(request: web.BaseRequest) -> tuple[str, str]:
    """The path and query exactly as sent (still percent-encoded).

    An absolute-form target (``GET http://host/v2/...``) keeps only its path and
    query, as RFC 9112 §3.2.2 has a server do.
    """
    target = request.raw_path
    if not target.startswith("/"):
        return request.rel_url.raw_path, request.rel_url.raw_query_string
    path, _, query = target.partition("?")
    return path, query
