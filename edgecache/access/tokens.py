"""Who is calling: tokens validated by keystonemiddleware's ``auth_token``, off the loop.

``auth_strategy = keystone`` reuses the middleware Glance itself runs, configured
by the same ``[keystone_authtoken]`` section, so expiry, revocation, service
tokens (``X-Service-Token``, ``allow_expired`` for ``service_token_roles``) and
its token cache behave exactly as in front of Glance. The middleware is WSGI
and blocking (it may call Keystone), so each validation is one call of it as a
WSGI application on a thread of a small pool of its own: a slow Keystone can
hold those threads, never the event loop or the disk threads.

Only the token headers reach the middleware; what comes back is an
:class:`Identity`. Tokens are never logged here; keystonemiddleware's and
keystoneauth's own loggers are held at WARNING (oslo.log's defaults for them:
below it they print Keystone's answers and tracebacks) and pass through a
filter that blanks anything shaped like a token, tracebacks included.

Authorization is not decided here: Glance decides per image (``metadata``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgecache.clock import SYSTEM, Clock

if TYPE_CHECKING:
    from oslo_config import cfg

LOG = logging.getLogger(__name__)

#: Request headers that carry tokens (``X-Storage-Token`` is auth_token's alias).
TOKEN_HEADERS = ("X-Auth-Token", "X-Storage-Token", "X-Service-Token")
#: Glance's default ``context_is_admin``: ``role:admin``.
ADMIN_ROLE = "admin"

_VALIDATION_THREADS = 8
#: Bound on remembered identities (only tokens Keystone accepted get in).
_MAX_KNOWN = 16384
_QUIET_LOGGERS = ("keystonemiddleware", "keystoneauth", "keystoneclient")
# Filters, unlike levels, are not inherited: the loggers that actually log.
_FILTERED_LOGGERS = (*_QUIET_LOGGERS, "keystonemiddleware.auth_token", "keystoneauth.session")

StartResponse = Callable[[str, list[tuple[str, str]]], object]

#: Fernet tokens, UUID tokens: any long opaque run with a digit (not a function name).
_TOKEN_LIKE = re.compile(r"\b(?=[A-Za-z_\-]*[0-9])[A-Za-z0-9_\-]{32,}={0,2}")


class RedactTokens(logging.Filter):
    """Blanks token-shaped strings in a record's message and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.msg = _TOKEN_LIKE.sub("<redacted>", text)
        record.args = None
        return True


def quiet_keystone_loggers() -> None:
    """WARNING and above only, token-shaped strings blanked (idempotent)."""
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        # Explicitly: a root logger turned to DEBUG (debug = true) must not reach them.
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)
    for name in _FILTERED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


@dataclass(frozen=True)
class Identity:
    """A validated caller, as keystonemiddleware describes it (no token inside)."""

    user_id: str | None
    project_id: str | None
    roles: frozenset[str]
    service_roles: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        """Glance's own notion: an admin sees every image, deleted ones excepted."""
        return ADMIN_ROLE in self.roles


class AuthRejected(Exception):
    """The request may not go on: 401 (with ``WWW-Authenticate``) or 503 (no Keystone)."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        super().__init__(f"authentication answered {status}")
        self.status = status
        self.headers = dict(headers)
        self.body = body


def _roles(value: str | None) -> frozenset[str]:
    return frozenset(r.strip() for r in (value or "").split(",") if r.strip())


def _passed(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The 'application' behind auth_token: reaching it means the token was accepted."""
    start_response("204 No Content", [])
    return [b""]


def _known_key(headers: Mapping[str, str]) -> str | None:
    """sha256 of the user token, when the request may use a remembered identity."""
    if headers.get("X-Service-Token") is not None:
        return None  # allow_expired and service roles: auth_token decides every time
    token = headers.get("X-Auth-Token") or headers.get("X-Storage-Token")
    return hashlib.sha256(token.strip().encode()).hexdigest() if token else None


def _reusable_for(environ: Mapping[str, Any]) -> float:
    """Seconds until the validated token expires; 0 when it must be checked each time."""
    info = environ.get("keystone.token_info")
    token = info.get("token") if isinstance(info, dict) else None
    if not isinstance(token, dict) or "application_credential" in token:
        return 0.0  # access rules depend on the path and method: no shortcut
    try:
        expires = dt.datetime.fromisoformat(str(token["expires_at"]))
    except (KeyError, ValueError):
        return 0.0
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=dt.UTC)
    return max(0.0, (expires - dt.datetime.now(dt.UTC)).total_seconds() - 1.0)


class KeystoneValidator:
    """keystonemiddleware ``AuthProtocol`` over ``[keystone_authtoken]``, called in threads."""

    def __init__(
        self, conf: cfg.ConfigOpts, *, threads: int = _VALIDATION_THREADS, clock: Clock = SYSTEM
    ) -> None:
        from keystonemiddleware import auth_token

        self._clock = clock
        quiet_keystone_loggers()
        self._protocol = auth_token.AuthProtocol(_passed, {"oslo_config_config": conf})
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="keystone-auth")
        self._www_authenticate: str | None = None
        # auth_token's own cache trusts a validated token this long (revocations
        # included): so may this one, which answers without a thread hop.
        self._known_for = float(conf.keystone_authtoken.token_cache_time)
        self._known: OrderedDict[str, tuple[float, Identity]] = OrderedDict()

    async def identify(self, method: str, path: str, headers: Mapping[str, str]) -> Identity:
        """The caller's identity, or AuthRejected with the answer to send instead.

        A user token (without service token) that auth_token accepted is
        remembered by its sha256, until the sooner of its expiry and
        ``token_cache_time``: callers with known tokens then never queue behind
        validations that wait on Keystone (a flood of garbage tokens, say).
        """
        key = _known_key(headers)
        if key is not None:
            known = self._known.get(key)
            if known is not None and known[0] > self._clock.monotonic():
                return known[1]
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            # Only the path matters to auth_token (access rules of application credentials).
            "PATH_INFO": path.split("?", 1)[0],
            "QUERY_STRING": "",
            "SERVER_NAME": "edgecache",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
        }
        for name in TOKEN_HEADERS:
            value = headers.get(name)
            if value is not None:
                environ["HTTP_" + name.upper().replace("-", "_")] = value
        loop = asyncio.get_running_loop()
        identity = await loop.run_in_executor(self._executor, self._validate, environ)
        lifetime = min(self._known_for, _reusable_for(environ))
        if key is not None and lifetime > 0:
            self._known[key] = (self._clock.monotonic() + lifetime, identity)
            self._known.move_to_end(key)
            while len(self._known) > _MAX_KNOWN:
                self._known.popitem(last=False)
        return identity

    def _validate(self, environ: dict[str, Any]) -> Identity:
        """One pass through auth_token (blocking: it may ask Keystone)."""
        answer: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], *_: object) -> None:
            answer["status"] = int(status.split(" ", 1)[0])
            answer["headers"] = headers

        body = b"".join(self._protocol(environ, start_response))
        status = answer.get("status", 500)
        if status != 204:
            headers = {name: value for name, value in answer.get("headers", [])
                       if name.lower() in ("content-type", "www-authenticate")}
            if status == 401 and "WWW-Authenticate" not in headers:
                headers["WWW-Authenticate"] = self._www_authenticate_header()
            raise AuthRejected(status, headers, body)
        # With delay_auth_decision = true auth_token lets invalid tokens through,
        # marked: edgecache has no anonymous access, so it refuses them itself.
        if environ.get("HTTP_X_IDENTITY_STATUS") != "Confirmed" or environ.get(
            "HTTP_X_SERVICE_IDENTITY_STATUS", "Confirmed"
        ) != "Confirmed":
            raise AuthRejected(
                401,
                {"Content-Type": "application/json",
                 "WWW-Authenticate": self._www_authenticate_header()},
                b'{"error": {"code": 401, "title": "Unauthorized", "message": '
                b'"The request you have made requires authentication."}}',
            )
        return Identity(
            user_id=environ.get("HTTP_X_USER_ID"),
            project_id=environ.get("HTTP_X_PROJECT_ID"),
            roles=_roles(environ.get("HTTP_X_ROLES")),
            service_roles=_roles(environ.get("HTTP_X_SERVICE_ROLES")),
        )

    def _www_authenticate_header(self) -> str:
        if self._www_authenticate is None:
            self._www_authenticate = f'Keystone uri="{self._protocol.www_authenticate_uri}"'
        return self._www_authenticate

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
