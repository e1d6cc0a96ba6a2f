"""Assembling the daemon: ``make_app(settings)`` and ``run(settings, conf)``.

Long-lived resources (the upstream client, the cache and its housekeeping) are
created in a ``cleanup_ctx``, so an app built in a test starts and stops them
exactly like the daemon does.

Under systemd (``Type=notify``): ``READY=1`` once listening, ``WATCHDOG=1`` from
the event loop itself, ``STOPPING=1`` on SIGTERM. SIGTERM drains: the health
check turns 503, the listening socket closes, running requests get
``shutdown_timeout`` seconds, then the cache stops and the process exits 0.
SIGHUP re-reads the config files and applies the mutable options.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import prometheus_client
import uvloop
from aiohttp import web
from oslo_config import cfg

from edgecache.access.grants import (
    KEYSTONE_CREDENTIALS,
    NOAUTH_CREDENTIALS,
    DownloadGrants,
    MetadataCache,
)
from edgecache.access.purge import DeletionCheck
from edgecache.api import authn
from edgecache.api.accesslog import AccessLogger
from edgecache.api.cache_api import CACHE_ADMIN_KEY, CacheAdmin
from edgecache.api.health import HEALTH_KEY, Health
from edgecache.api.images import ImageService
from edgecache.api.routes import SERVICE_KEY, setup_routes
from edgecache.api.streaming import SENDERS_KEY, Senders
from edgecache.clock import SYSTEM, Clock
from edgecache.core.cache import ImageCache
from edgecache.core.diskstore import DiskStore
from edgecache.core.signature import SignatureCheck
from edgecache.daemon import logs, sdnotify
from edgecache.daemon.config import Settings, live_settings
from edgecache.errors import ConfigError
from edgecache.metrics import Metrics
from edgecache.model import ImageMeta, ImageSource
from edgecache.ops.prefetch import MetadataSource, Prefetcher, PrefetchQueue
from edgecache.ops.scrub import Scrubber
from edgecache.upstream.glance import GlanceUpstream
from edgecache.upstream.keymanager import CastellanCertificates
from edgecache.upstream.service_auth import credentials_for
from edgecache.upstream.stores import DirectStoreSource, default_stores
from edgecache.upstream.stores.allow import StoreAllowlist

LOG = logging.getLogger(__name__)

SETTINGS_KEY = web.AppKey("edgecache.settings", Settings)
METRICS_KEY = web.AppKey("edgecache.metrics", Metrics)
CLOCK_KEY = web.AppKey("edgecache.clock", Clock)


def make_app(
    settings: Settings, *, metrics: Metrics | None = None, clock: Clock = SYSTEM
) -> web.Application:
    """A ready-to-run application; resources are opened when it starts.

    ``clock`` is the time every rule of the daemon reads (tests pass a fake one).
    """
    app = web.Application(handler_args={"max_field_size": 16384, "max_line_size": 16384})
    app[SETTINGS_KEY] = settings
    app[METRICS_KEY] = metrics or Metrics()
    app[CLOCK_KEY] = clock
    app[HEALTH_KEY] = Health(clock=clock)
    app.cleanup_ctx.append(_service)
    app[SENDERS_KEY] = Senders()
    app.on_cleanup.append(_close_senders)
    setup_routes(app)
    if settings.auth_strategy == "keystone":
        if settings.keystone_conf is None:
            # Never open: without a validator every caller would be let through.
            raise ConfigError("auth_strategy = keystone needs [keystone_authtoken]")
        from edgecache.access.tokens import (
            KeystoneValidator,  # keystonemiddleware: keystone mode only
        )

        authn.setup(app, KeystoneValidator(settings.keystone_conf, clock=clock))
    return app


async def _close_senders(app: web.Application) -> None:
    app[SENDERS_KEY].close()


async def _service(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    metrics = app[METRICS_KEY]
    upstream_settings = settings.upstream
    async with GlanceUpstream(
        upstream_settings.glance_endpoints,
        connect_timeout=upstream_settings.connect_timeout,
        read_timeout=upstream_settings.read_timeout,
        http_proxy=upstream_settings.http_proxy,
        clock=app[CLOCK_KEY],
    ) as upstream:
        source: ImageSource = upstream
        if upstream_settings.direct_stores and not settings.cache.verify:
            # store bytes are trusted only once verified against Glance's hash
            LOG.warning("[upstream] direct_stores = true but [cache] verify = false: no "
                        "store is read directly, every image comes from Glance's /file")
        elif upstream_settings.direct_stores:
            allow = StoreAllowlist(upstream_settings.direct_store_allow)
            if not allow:
                LOG.warning("[upstream] direct_stores = true but direct_store_allow is "
                            "empty: no store is read directly, every image comes from "
                            "Glance's /file")
            stores = default_stores(upstream.session, settings.prefetch.upstream_auth,
                                    allow=allow)
            source = DirectStoreSource(upstream, stores, metrics)
        cache = ImageCache(
            DiskStore(settings.cache.directory),
            source,
            max_size=settings.cache.max_size,
            stall_time=settings.cache.stall_time,
            verify=settings.cache.verify,
            max_resume_attempts=upstream_settings.max_resume_attempts,
            failure_cooldown=settings.cache.failure_cooldown,
            metrics=metrics,
            clock=app[CLOCK_KEY],
            safety=settings.image_safety,
            signatures=_signature_check(settings),
        )
        await cache.start()
        metadata = MetadataCache(
            upstream,
            ttl=upstream_settings.auth_cache_ttl,
            offline_ttl=(
                upstream_settings.offline_auth_ttl
                if upstream_settings.serve_cached_on_upstream_failure else 0.0
            ),
            clock=app[CLOCK_KEY],
            credential_headers=(
                KEYSTONE_CREDENTIALS if settings.auth_strategy == "keystone"
                else NOAUTH_CREDENTIALS
            ),
        )
        downloads = DownloadGrants(upstream, metadata, clock=app[CLOCK_KEY])
        deletions = DeletionCheck(
            cache, metadata, upstream, credentials_for(settings.prefetch.upstream_auth),
            min_interval=max(1.0, upstream_settings.auth_cache_ttl),
            clock=app[CLOCK_KEY],
        )
        app[SERVICE_KEY] = ImageService(
            cache=cache,
            metadata=metadata,
            upstream=upstream,
            metrics=metrics,
            downloads=downloads,
            deletions=deletions,
            fill_asks_glance=not upstream_settings.direct_stores,
        )
        cache_admin = build_cache_admin(
            settings, cache, upstream, app[SERVICE_KEY].metadata.get, metrics, app[CLOCK_KEY]
        )
        await cache_admin.start()  # prefetch workers and the scrubber
        app[CACHE_ADMIN_KEY] = cache_admin
        lag_monitor = asyncio.create_task(_watch_loop_lag(metrics))
        try:
            yield
        finally:
            lag_monitor.cancel()
            await deletions.close()
            await cache_admin.stop()
            await cache.stop()


def _signature_check(settings: Settings) -> SignatureCheck | None:
    """``[image_safety] verify_signatures``: certificates from castellan's key manager."""
    policy = settings.image_safety
    if not policy.verify_signatures:
        return None
    conf = settings.key_manager_conf or cfg.ConfigOpts()
    return SignatureCheck(CastellanCertificates(conf), require=policy.require_signatures)


def build_cache_admin(
    settings: Settings,
    cache: ImageCache,
    upstream: MetadataSource,
    lookup: Callable[[str, Mapping[str, str]], Awaitable[ImageMeta]],
    metrics: Metrics,
    clock: Clock = SYSTEM,
) -> CacheAdmin:
    """The prefetch queue (under the cache directory), its workers and the scrubber."""
    if settings.auth_strategy == "keystone" and settings.prefetch.upstream_auth is None:
        LOG.warning(
            "auth_strategy = keystone without [upstream_auth] credentials: prefetches "
            "send no token, and Glance will refuse them"
        )
    prefetcher = Prefetcher(
        cache,
        upstream,
        PrefetchQueue(Path(settings.cache.directory) / "prefetch"),
        workers=settings.prefetch.workers,
        max_rate=settings.prefetch.max_rate,
        credentials=credentials_for(settings.prefetch.upstream_auth),
        metrics=metrics,
        clock=clock,
    )
    scrubber = Scrubber(
        cache, rate=settings.cache.scrub_rate, interval=settings.cache.scrub_interval,
        clock=clock,
    )
    return CacheAdmin(
        cache=cache,
        prefetcher=prefetcher,
        scrubber=scrubber,
        lookup=lookup,
        auth_strategy=settings.auth_strategy,
        admin_roles=settings.cache_api.admin_roles,
    )


async def _watch_loop_lag(metrics: Metrics, interval: float = 0.01) -> None:
    """Observe how late a short timer fires: a blocked loop stalls every client."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(interval)
        metrics.event_loop_lag.observe(max(0.0, loop.time() - before - interval))


def run(settings: Settings, conf: cfg.ConfigOpts | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then drain; SIGHUP re-reads ``conf`` (when given)."""
    # No ``*_created`` series: in the text format each is one more series per label
    # set that no query uses. Process-wide, hence here and not in make_app.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    if settings.event_loop == "uvloop":
        uvloop.run(_serve(settings, conf))
    else:
        asyncio.run(_serve(settings, conf))


def runner_options(settings: Settings) -> dict[str, Any]:
    """How aiohttp serves the app (the tests' servers take the same)."""
    return {
        "access_log_class": AccessLogger,
        # A client that goes away cancels its handler: a fill it started goes on.
        "handler_cancellation": True,
        "shutdown_timeout": settings.shutdown_timeout,
        # Also the limit for a request's headers to arrive: aiohttp closes a
        # connection still waiting for a complete request when it expires.
        "keepalive_timeout": settings.client_socket_timeout,
    }


async def _serve(settings: Settings, conf: cfg.ConfigOpts | None = None) -> None:
    app = make_app(settings)
    # aiohttp's own graceful stop is the drain: close the listening socket, close
    # idle keep-alive connections, wait up to shutdown_timeout for running
    # handlers, cancel the rest, then run the cleanup_ctx (the cache stops).
    runner = web.AppRunner(app, **runner_options(settings))
    _raise_open_files_limit()
    await runner.setup()
    watchdog: asyncio.Task[None] | None = None
    reloads: set[asyncio.Task[None]] = set()
    try:
        site = web.TCPSite(runner, settings.bind_host, settings.bind_port, backlog=1024)
        await site.start()
        LOG.info(
            "edgecache listening on %s:%d, upstream %s, cache %s",
            settings.bind_host, settings.bind_port,
            ", ".join(settings.upstream.glance_endpoints), settings.cache.directory,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, _start_reload, app, conf, reloads)
        freeze_startup_objects()
        sdnotify.notify("READY=1")
        interval = sdnotify.watchdog_interval()
        if interval is not None:
            watchdog = asyncio.create_task(_watchdog(interval), name="watchdog")
        await stop.wait()
        sdnotify.notify("STOPPING=1")
        app[HEALTH_KEY].draining = True
        LOG.info(
            "stopping: closing the listening socket; %d fills in progress; running requests "
            "get up to %g s", app[SERVICE_KEY].cache.usage().fills, settings.shutdown_timeout,
        )
    finally:
        started = time.monotonic()
        try:
            await runner.cleanup()
        finally:
            # Pings go on while draining: the drain may outlast WatchdogSec.
            if watchdog is not None:
                watchdog.cancel()
    LOG.info("stopped after draining for %.1f s", time.monotonic() - started)


def freeze_startup_objects() -> None:
    """Keep what start-up built (modules, config, metrics: ~50k objects) out of every later
    garbage collection.

    A full collection walks every tracked object; with those in, each one held the
    loop for 20-50 ms on the 2-core machines, and the allocations of a few thousand
    requests trigger one. Frozen, a collection walks only what serving created.
    """
    gc.collect()
    gc.freeze()


def _raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard one: each client connection is a descriptor.

    With the usual soft limit of 1024, a thousand idle connections would make
    accept() fail for everyone else until they time out.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            LOG.warning("could not raise the open files limit from %d: %s", soft, exc)


async def _watchdog(interval: float) -> None:
    """``WATCHDOG=1`` every ``interval`` s, sent by the event loop itself.

    A loop that stops turning (a blocking call, a deadlock) stops the pings, and
    systemd restarts the daemon after ``WatchdogSec``.
    """
    while True:
        sdnotify.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def _start_reload(
    app: web.Application, conf: cfg.ConfigOpts | None, tasks: set[asyncio.Task[None]]
) -> None:
    task = asyncio.create_task(reload_config(app, conf), name="reload")
    tasks.add(task)  # a reference until done: the loop keeps only weak ones
    task.add_done_callback(tasks.discard)


async def reload_config(app: web.Application, conf: cfg.ConfigOpts | None) -> None:
    """SIGHUP: re-read the config files and apply the options that can change live.

    ``mutate_config_files`` changes only options declared ``mutable`` (and warns
    about the others); their new values go to the live objects, since
    :class:`Settings` is frozen: the log level, and the cache's ``max_size``
    with eviction down to it.
    """
    if conf is None:
        LOG.warning("SIGHUP: no configuration files to re-read")
        return
    if app[HEALTH_KEY].draining:
        LOG.info("SIGHUP while stopping: ignored")
        return
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    sdnotify.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")
    try:
        await asyncio.to_thread(conf.mutate_config_files)
        live = live_settings(conf)
        logs.set_debug(live.debug)
        cache = app[SERVICE_KEY].cache
        if live.max_size != cache.max_size:
            LOG.info("SIGHUP: [cache] max_size %d -> %d bytes", cache.max_size, live.max_size)
            await cache.resize(live.max_size)
        LOG.info("SIGHUP: configuration re-read (debug = %s, max_size = %d)",
                 live.debug, live.max_size)
    except ConfigError as exc:
        LOG.error("SIGHUP: %s; the running configuration stays", exc)
    except Exception:
        LOG.exception("SIGHUP: could not apply the configuration; the running one stays")
    finally:
        sdnotify.notify("READY=1")
