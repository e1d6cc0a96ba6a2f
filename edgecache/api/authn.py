"""Authentication of every ``/v2`` request when ``auth_strategy = keystone``.

Glance runs ``authtoken`` after version negotiation: ``/`` and ``/versions``
need no token, everything under ``/v2`` does. edgecache adds its own
``/metrics`` and ``/healthcheck`` (no token, as Prometheus and load balancers
call them). A missing, invalid or expired token gets 401 with
``WWW-Authenticate: Keystone uri="..."`` before anything is served or
forwarded; a Keystone that cannot be reached gets 503.

The validated caller is ``request[IDENTITY_KEY]``. aiohttp's request headers
cannot be rewritten, so a header such as ``X-Roles`` is still whatever the
*client* sent: code that needs roles must call :func:`caller_roles`, never read
the header, or any caller could claim ``admin``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from edgecache.access.tokens import AuthRejected, Identity, KeystoneValidator
from edgecache.api.errors import ROUTE_KEY
from edgecache.api.target import request_target

VALIDATOR_KEY = web.AppKey("edgecache.token_validator", KeystoneValidator)
IDENTITY_KEY = web.RequestKey("edgecache.identity", Identity)

_NEEDS_TOKEN = re.compile(r"^(?:/[^/]+)*?/v2(?:/.*)?$")
_PUBLIC = frozenset({"/metrics", "/healthcheck"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def needs_token(raw_path: str) -> bool:
    """Glance's paths under ``/v2`` (after any prefix); not versions, metrics, health."""
    return raw_path not in _PUBLIC and _NEEDS_TOKEN.match(raw_path) is not None


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Validate the caller's token (keystone mode) before any handler runs."""
    validator = request.app.get(VALIDATOR_KEY)
    raw_path, _ = request_target(request)  # the path the router will serve
    if validator is None or not needs_token(raw_path):
        return await handler(request)
    try:
        identity = await validator.identify(request.method, raw_path, request.headers)
    except AuthRejected as rejected:
        request[ROUTE_KEY] = "rejected"
        return web.Response(status=rejected.status, body=rejected.body, headers=rejected.headers)
    request[IDENTITY_KEY] = identity
    return await handler(request)


def caller_identity(request: web.Request) -> Identity | None:
    """The validated caller, or None with ``auth_strategy = noauth``."""
    return request.get(IDENTITY_KEY)


def caller_roles(request: web.Request) -> frozenset[str]:
    """The caller's roles: validated ones in keystone mode, ``X-Roles`` as sent with noauth."""
    identity = caller_identity(request)
    if identity is not None:
        return identity.roles
    if request.app.get(VALIDATOR_KEY) is not None:
        return frozenset()  # keystone mode: a client's own X-Roles is never believed
    header = request.headers.get("X-Roles", "")
    return frozenset(r.strip() for r in header.split(",") if r.strip())


def setup(app: web.Application, validator: KeystoneValidator) -> None:
    """Install the validator (after ``routes.setup_routes``: request ids come first)."""
    app[VALIDATOR_KEY] = validator
    app.middlewares.append(authenticate)

    async def close(_: web.Application) -> None:
        validator.close()

    app.on_cleanup.append(close)
