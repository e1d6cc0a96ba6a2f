"""Assembling the daemon: ``make_app(settings)`` and ``run(settings)``.

Long-lived resources (the upstream client, the cache and its housekeeping) are
created in a ``cleanup_ctx``, so an app built in a test starts and stops them
exactly like the daemon does.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator

from aiohttp import web

from edgecache import sdnotify
from edgecache.api.images import ImageService
from edgecache.api.routes import SERVICE_KEY, setup_routes
from edgecache.cache import ImageCache
from edgecache.config import Settings
from edgecache.diskstore import DiskStore
from edgecache.metadata import MetadataCache
from edgecache.metrics import Metrics
from edgecache.upstream.glance import GlanceUpstream

LOG = logging.getLogger(__name__)

SETTINGS_KEY = web.AppKey("edgecache.settings", Settings)
METRICS_KEY = web.AppKey("edgecache.metrics", Metrics)


def make_app(settings: Settings, *, metrics: Metrics | None = None) -> web.Application:
    """A ready-to-run application; resources are opened when it starts."""
    app = web.Application(handler_args={"max_field_size": 16384, "max_line_size": 16384})
    app[SETTINGS_KEY] = settings
    app[METRICS_KEY] = metrics or Metrics()
    app.cleanup_ctx.append(_service)
    setup_routes(app)
    return app


async def _service(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    metrics = app[METRICS_KEY]
    upstream_settings = settings.upstream
    async with GlanceUpstream(
        upstream_settings.glance_endpoints,
        connect_timeout=upstream_settings.connect_timeout,
        read_timeout=upstream_settings.read_timeout,
    ) as upstream:
        cache = ImageCache(
            DiskStore(settings.cache.directory),
            upstream,
            max_size=settings.cache.max_size,
            stall_time=settings.cache.stall_time,
            verify=settings.cache.verify,
            max_resume_attempts=upstream_settings.max_resume_attempts,
            metrics=metrics,
        )
        await cache.start()
        app[SERVICE_KEY] = ImageService(
            cache=cache,
            metadata=MetadataCache(upstream, ttl=upstream_settings.auth_cache_ttl),
            upstream=upstream,
            metrics=metrics,
        )
        lag_monitor = asyncio.create_task(_watch_loop_lag(metrics))
        try:
            yield
        finally:
            lag_monitor.cancel()
            await cache.stop()


async def _watch_loop_lag(metrics: Metrics, interval: float = 0.01) -> None:
    """Observe how late a short timer fires: a blocked loop stalls every client."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(interval)
        metrics.event_loop_lag.observe(max(0.0, loop.time() - before - interval))


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM, telling systemd when ready and when stopping."""
    asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> None:
    app = make_app(settings)
    runner = web.AppRunner(app, access_log_format='%a "%r" %s %b %Tf', handler_cancellation=True)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.bind_host, settings.bind_port, backlog=1024)
        await site.start()
        LOG.info(
            "edgecache listening on %s:%d, upstream %s, cache %s",
            settings.bind_host, settings.bind_port,
            ", ".join(settings.upstream.glance_endpoints), settings.cache.directory,
        )
        sdnotify.notify("READY=1")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        LOG.info("stopping")
        sdnotify.notify("STOPPING=1")
    finally:
        await runner.cleanup()
