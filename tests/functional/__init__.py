"""Behaviour tests of the daemon, in-process, in front of FaultyGlance (docs/behaviour.md).

Each test builds the real application with :func:`edgecache.daemon.app.make_app`, serves
it with pytest-aiohttp's test server (``handler_cancellation`` on, like the
daemon) and talks HTTP to it; FaultyGlance runs in the same event loop. The
helpers below are shared by the ``test_*.py`` modules of this package.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDictProxy
from oslo_config import cfg
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient

from edgecache.api.routes import SERVICE_KEY
from edgecache.clock import SYSTEM
from edgecache.core.cache import ImageCache
from edgecache.core.inspection import SafetyPolicy
from edgecache.daemon.app import METRICS_KEY, make_app, runner_options
from edgecache.daemon.config import CacheSettings, Settings, UpstreamSettings
from edgecache.metrics import Metrics
from lab.polling import wait_until_async
from lab.ports import free_port
from tests.support.clock import FakeClock

#: Upper bound on any single wait in these tests (a hang fails fast, not after 300 s).
WAIT = 10.0


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


def file_path(image_id: str) -> str:
    return f"/v2/images/{image_id}/file"


def closed_port_url() -> str:
    """An http URL on loopback where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


@dataclass
class Fetched:
    """One response as a client saw it, body read until its end or its breakage."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    error: BaseException | None
    first_byte: float | None
    elapsed: float

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None else None

    @property
    def broken(self) -> bool:
        """The body ended in a transport error, never cleanly."""
        return isinstance(self.error, (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError))


async def read_body(
    resp: aiohttp.ClientResponse, started: float
) -> tuple[bytes, BaseException | None, float | None]:
    body = bytearray()
    first: float | None = None
    try:
        async for chunk in resp.content.iter_any():
            if first is None:
                first = time.monotonic() - started
            body += chunk
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        return bytes(body), exc, first
    return bytes(body), None, first


@dataclass
class Edge:
    """An edgecache application under test, its client and its cache directory."""

    client: TestClient[web.Request, web.Application]
    app: web.Application
    root: Path
    #: the app's clock when the test drives time itself
    clock: FakeClock | None = None

    # -- HTTP ----------------------------------------------------------------------

    async def fetch(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        data: Any = None,
        within: float = WAIT,
    ) -> Fetched:
        started = time.monotonic()
        async with (
            asyncio.timeout(within),
            self.client.request(method, path, headers=headers, data=data) as resp,
        ):
            body, error, first = await read_body(resp, started)
            return Fetched(
                resp.status, resp.headers, body, error, first, time.monotonic() - started
            )

    async def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """``GET /metrics``, parsed: (sample name, labels) -> value."""
        resp = await self.client.get("/metrics")
        assert resp.status == 200
        text = await resp.text()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    # -- state ---------------------------------------------------------------------

    @property
    def cache(self) -> ImageCache:
        return self.app[SERVICE_KEY].cache

    @property
    def metrics(self) -> Metrics:
        return self.app[METRICS_KEY]

    def sample(self, name: str, **labels: str) -> float:
        """A metric sample from the app's registry (0 when never set)."""
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def requests(self, result: str) -> float:
        return self.sample("edgecache_image_requests_total", result=result)

    def data_files(self) -> dict[str, int]:
        """Committed files: name -> size (a file unlinked while listing is left out)."""
        files = {}
        for path in (self.root / "data").iterdir():
            with contextlib.suppress(FileNotFoundError):
                files[path.name] = path.stat().st_size
        return files

    def data_bytes(self, image_id: str) -> bytes:
        return (self.root / "data" / image_id).read_bytes()

    def incomplete_files(self) -> list[str]:
        return sorted(p.name for p in (self.root / "incomplete").iterdir())

    def fill_tasks_running(self) -> bool:
        return bool(self.cache.fills()) or any(
            task.get_name().startswith("fill-") and not task.done()
            for task in asyncio.all_tasks()
        )

    async def settled(self, within: float = WAIT) -> None:
        """Wait until no fill is running (committed, or discarded and its partial gone)."""
        await eventually(lambda: not self.fill_tasks_running(), within, "fills still running")
        await eventually(lambda: not self.incomplete_files(), within, "partials left behind")


async def eventually(
    predicate: Callable[[], bool], within: float = WAIT, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``within`` seconds."""
    await wait_until_async(predicate, what, within)


def settings(
    root: Path,
    endpoints: tuple[str, ...],
    *,
    max_size: int = 1 << 30,
    stall_time: float = 86400.0,
    failure_cooldown: float = 30.0,
    auth_cache_ttl: float = 60.0,
    read_timeout: float = 30.0,
    direct_stores: bool = False,
    direct_store_allow: tuple[str, ...] = (),
    max_resume_attempts: int = 5,
    image_safety: SafetyPolicy | None = None,
    key_manager_conf: cfg.ConfigOpts | None = None,
) -> Settings:
    return Settings(
        image_safety=image_safety or SafetyPolicy(),
        key_manager_conf=key_manager_conf,
        cache=CacheSettings(
            directory=str(root), max_size=max_size, stall_time=stall_time,
            failure_cooldown=failure_cooldown,
        ),
        upstream=UpstreamSettings(
            glance_endpoints=endpoints,
            auth_cache_ttl=auth_cache_ttl,
            connect_timeout=2.0,
            read_timeout=read_timeout,
            direct_stores=direct_stores,
            direct_store_allow=direct_store_allow,
            max_resume_attempts=max_resume_attempts,
        ),
    )


async def start_edgecache(
    aiohttp_client: AiohttpClient,
    root: Path,
    endpoints: tuple[str, ...],
    *,
    clock: FakeClock | None = None,
    **options: Any,
) -> Edge:
    """edgecache with its cache in ``root``, in front of ``endpoints``, being served.

    With ``clock``, every rule of the app runs on that fake clock.
    """
    chosen = settings(root, endpoints, **options)
    app = make_app(chosen, clock=clock or SYSTEM)
    server = TestServer(app)
    # As the daemon serves it (aiohttp's test server always cancels handlers).
    options = runner_options(chosen)
    options.pop("handler_cancellation")
    await server.start_server(**options)
    client: TestClient[web.Request, web.Application] = await aiohttp_client(server)  # type: ignore[assignment]
    return Edge(client=client, app=app, root=root, clock=clock)
