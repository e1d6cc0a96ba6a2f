"""``GET /healthcheck`` in oslo.middleware's manner.

``GET`` answers 200 ``OK`` while edgecache serves and 503 with the failing
reasons while it drains (after SIGTERM) or when its cache directory cannot
take a new file; ``HEAD`` answers 204 / 503 without a body, as oslo.middleware
does. ``Accept: application/json`` gets ``{"detailed": false, "reasons": [...]}``.

Detail (each check with its details, cache usage, version, uptime) is for
callers on this host, who can read the logs and the cache directory anyway:
a loopback peer that is not relaying someone else (no ``Forwarded`` /
``X-Forwarded-For``). That holds in both auth modes. In ``noauth`` nothing can
vouch for a remote caller. With ``keystone`` the health check is still public,
as in Glance's paste pipeline (healthcheck before authtoken): validating an
admin token there would make "is edgecache up?" depend on Keystone answering.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web

from edgecache import __version__
from edgecache.api.images import ImageService
from edgecache.clock import SYSTEM, Clock

#: How long a write probe of the cache directory is reused: health checks may
#: come many times a second, and each probe creates and removes a file.
PROBE_TTL = 1.0


@dataclass
class Health:
    """What the health check reports beyond the cache itself: the daemon's lifecycle."""

    clock: Clock = SYSTEM
    draining: bool = False
    started: float = field(default=0.0)
    _probed_at: float | None = None
    _problem: str | None = None

    def __post_init__(self) -> None:
        self.started = self.clock.monotonic()

    async def cache_problem(self, service: ImageService) -> str | None:
        """Why no new file can be created in the cache, or None (probed at most every 1 s)."""
        now = self.clock.monotonic()
        if self._probed_at is None or now - self._probed_at >= PROBE_TTL:
            self._problem = await service.cache.probe_write()
            self._probed_at = self.clock.monotonic()
        return self._problem


HEALTH_KEY = web.AppKey("edgecache.health", Health)


@dataclass(frozen=True)
class Check:
    """One check's verdict (``name`` is what oslo.middleware calls the class)."""

    name: str
    ok: bool
    reason: str
    details: str


async def healthcheck(request: web.Request, service: ImageService) -> web.Response:
    """Answer ``GET``/``HEAD /healthcheck``."""
    health = request.app[HEALTH_KEY]
    checks = await _checks(health, service)
    healthy = all(check.ok for check in checks)
    if request.method == "HEAD":
        return web.Response(status=204 if healthy else 503)
    status = 200 if healthy else 503
    reasons = [c.reason for c in checks if not c.ok] or ["OK"]
    if _prefers_json(request.headers.get("Accept", "")):
        body: dict[str, object] = {"detailed": False, "reasons": reasons}
        if detail_allowed(request):
            body = {
                "detailed": True,
                "reasons": [
                    {"reason": c.reason, "details": c.details, "class": c.name} for c in checks
                ],
                "now": datetime.now(UTC).isoformat(),
                "version": __version__,
                "uptime_seconds": round(health.clock.monotonic() - health.started, 3),
                "cache": _cache_detail(service),
            }
        return web.Response(
            status=status, text=json.dumps(body, indent=4, sort_keys=True),
            content_type="application/json",
        )
    return web.Response(status=status, text="\n".join(reasons), content_type="text/plain")


async def _checks(health: Health, service: ImageService) -> list[Check]:
    if health.draining:
        lifecycle = Check("Lifecycle", False, "DRAINING",
                          "stopping: running downloads finish, new connections are refused")
    else:
        lifecycle = Check("Lifecycle", True, "OK", "serving")
    problem = await health.cache_problem(service)
    directory = str(service.cache.directory)
    if problem is None:
        storage = Check("CacheDirectory", True, "OK", f"{directory} is writable")
    else:
        storage = Check("CacheDirectory", False, "CACHE DIRECTORY NOT WRITABLE", problem)
    return [lifecycle, storage]


def _cache_detail(service: ImageService) -> dict[str, object]:
    usage = service.cache.usage()
    return {
        "directory": str(service.cache.directory),
        "images": usage.images,
        "size_bytes": usage.size,
        "max_size_bytes": usage.max_size,
        "fills_in_progress": usage.fills,
    }


def detail_allowed(request: web.Request) -> bool:
    """A caller on this host speaking for itself."""
    if "Forwarded" in request.headers or "X-Forwarded-For" in request.headers:
        return False  # a local proxy relaying a remote caller
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False  # a unix socket peer, or none


def _prefers_json(accept: str) -> bool:
    """Content negotiation between text/plain (preferred on a tie) and application/json."""
    return _quality(accept, "application", "json") > _quality(accept, "text", "plain")


def _quality(accept: str, major: str, minor: str) -> float:
    """The q the Accept header gives ``major/minor``; the most specific range wins."""
    if not accept.strip():
        return 1.0 if (major, minor) == ("text", "plain") else 0.0
    best: tuple[int, float] = (-1, 0.0)
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        kind, _, sub = media.lower().partition("/")
        if (kind, sub) == (major, minor):
            specificity = 2
        elif (kind, sub) == (major, "*"):
            specificity = 1
        elif (kind, sub) == ("*", "*"):
            specificity = 0
        else:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if specificity > best[0]:
            best = (specificity, q)
    return best[1]
