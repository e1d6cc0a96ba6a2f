"""An HTTP relay for tests: a reverse proxy that can cut image bodies, or a forward proxy.

:class:`Relay` runs an aiohttp server in a thread of its own (the daemon under test
is another process, and the test body is synchronous). It streams every request
to an origin and the answer back, and records what passed:

* **reverse** (``Relay(origin=glance.url)``): edgecache's ``glance_endpoints``
  points at the relay. :meth:`cut_next` makes the next image-data answers break
  off (the connection is aborted) after a given number of body bytes, as a flaky
  WAN link would; :meth:`stall_bodies` makes every image-data answer stop after a
  given number of body bytes and then send nothing, the connection left open, as
  a hung proxy or Glance would; :meth:`hang_files` makes it take image-data GETs
  and never answer them at all (recorded with status 0); :meth:`hold_after` makes
  full (200) image bodies stop after a given number of bytes until :meth:`release`,
  so a test knows a fill is still running while it does other things. Every
  other answer is relayed whole.
* **forward** (``Relay()``): an HTTP proxy (``[upstream] http_proxy``); the
  request line carries the absolute URL of the origin, which is where it goes.

Only the bodies of responses are counted and cut; request bodies are relayed as
they come. Hop-by-hop headers are dropped both ways.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import threading
from collections import deque
from types import TracebackType
from typing import NamedTuple, Self

import aiohttp
from aiohttp import web

__all__ = ["Relay", "RelayedRequest"]

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_IMAGE_FILE = re.compile(r"^/v2/images/[^/]+/file$")
#: edgecache's ``download_image`` check: a one-byte GET (docs/behaviour.md#authorization)
_PROBE_RANGE = "bytes=0-0"


class RelayedRequest(NamedTuple):
    """One request that went through: where to, its Range, the answer and bytes relayed."""

    method: str
    url: str
    path: str
    range: str | None
    status: int
    body_bytes: int
    cut: bool
    stalled: bool = False


class Relay:
    """A relay between edgecache and its upstream (see the module docstring)."""

    def __init__(self, origin: str | None = None) -> None:
        self.origin = origin.rstrip("/") if origin else None
        self.requests: list[RelayedRequest] = []
        self._cuts: deque[int] = deque()
        self._stall_after: int | None = None
        self._hang_files = False
        self._hold_after: int | None = None
        self._released = threading.Event()
        #: set while a body is held (see hold_after)
        self.holding = threading.Event()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut_next(self, *after: int) -> None:
        """Break off the next image-data bodies, one per value, after that many bytes."""
        with self._lock:
            self._cuts.extend(after)

    def stall_bodies(self, after: int | None) -> None:
        """From now on every image-data body stops after ``after`` bytes and stays open,
        silent, until the client leaves or the relay stops; None relays them whole again."""
        with self._lock:
            self._stall_after = after

    def hold_after(self, count: int) -> None:
        """Stop every full (200) image-data body after ``count`` bytes until release()."""
        self._released.clear()
        self._hold_after = count

    def release(self) -> None:
        """Let held bodies go on, and hold no more."""
        self._hold_after = None
        self._released.set()

    def hang_files(self, on: bool) -> None:
        """From now on (``on``) every image-data GET is taken and never answered."""
        with self._lock:
            self._hang_files = on

    def file_requests(self, path: str | None = None) -> list[RelayedRequest]:
        """The image-data GETs relayed so far (for one image's ``path`` if given), edgecache's
        download checks (:meth:`probes`) aside: they carry no data."""
        return [r for r in self._file_gets(path) if r.range != _PROBE_RANGE]

    def probes(self, path: str | None = None) -> list[RelayedRequest]:
        """edgecache's ``download_image`` checks relayed so far (one-byte GETs)."""
        return [r for r in self._file_gets(path) if r.range == _PROBE_RANGE]

    def _file_gets(self, path: str | None) -> list[RelayedRequest]:
        with self._lock:
            return [
                r
                for r in self.requests
                if r.method == "GET" and _IMAGE_FILE.match(r.path) and path in (None, r.path)
            ]

    # -- serving -------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.origin is not None:
            target = self.origin + str(request.rel_url)
        elif request.url.host:
            target = str(request.url)  # absolute-form request line: a forward proxy
        else:
            return web.Response(status=400, text="not a proxy request")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        cut_after: int | None = None
        stall_after: int | None = None
        hang = False
        probe = (request.headers.get("Range") or "").replace(" ", "") == _PROBE_RANGE
        if request.method == "GET" and _IMAGE_FILE.match(request.path) and not probe:
            # (edgecache's one-byte download checks are relayed as they are: no data)
            with self._lock:
                cut_after = self._cuts.popleft() if self._cuts else None
                stall_after = self._stall_after
                hang = self._hang_files
        session = request.app[_SESSION]
        data = request.content if request.body_exists else None
        sent = 0
        status = 502
        cut = stalled = False
        try:
            if hang:
                status = 0  # no answer at all, until the client leaves or the relay stops
                assert self._stop is not None
                await self._stop.wait()
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=502)
            async with session.request(
                request.method, target, headers=headers, data=data, allow_redirects=False
            ) as upstream:
                status = upstream.status
                response = web.StreamResponse(status=upstream.status)
                for name, value in upstream.headers.items():
                    if name.lower() not in _HOP_BY_HOP:
                        response.headers.add(name, value)
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                hold = self._hold_after if upstream.status == 200 and cut_after is None \
                    and _IMAGE_FILE.match(request.path) else None
                async for chunk in upstream.content.iter_any():
                    if hold is not None and sent + len(chunk) >= hold:
                        await response.write(chunk[: hold - sent])
                        chunk, sent = chunk[hold - sent:], hold
                        self.holding.set()
                        await asyncio.get_running_loop().run_in_executor(
                            None, self._released.wait, 120.0)
                        self.holding.clear()
                        hold = None
                    if stall_after is not None and sent + len(chunk) >= stall_after:
                        await response.write(chunk[: stall_after - sent])
                        sent = stall_after
                        stalled = True
                        # silent from here on; a client that gives up cancels this
                        # handler (handler_cancellation), the relay's stop ends it
                        assert self._stop is not None
                        await self._stop.wait()
                        if request.transport is not None:
                            request.transport.abort()
                        return response
                    if cut_after is not None and sent + len(chunk) >= cut_after:
                        await response.write(chunk[: cut_after - sent])
                        sent = cut_after
                        cut = True
                        break
                    await response.write(chunk)
                    sent += len(chunk)
                if cut:
                    transport = request.transport
                    if transport is not None:
                        transport.abort()
                    return response
                await response.write_eof()
                return response
        except aiohttp.ClientError as exc:
            return web.Response(status=502, text=f"relay: {exc!r}")
        finally:
            with self._lock:
                self.requests.append(
                    RelayedRequest(
                        request.method,
                        target,
                        request.path,
                        request.headers.get("Range"),
                        status,
                        sent,
                        cut,
                        stalled,
                    )
                )

    async def _serve(self, ready: concurrent.futures.Future[int]) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        session = aiohttp.ClientSession(
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=120),
        )
        app[_SESSION] = session
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._stop = asyncio.Event()
        ready.set_result(int(runner.addresses[0][1]))
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await session.close()

    def start(self) -> Self:
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(ready))
            except BaseException as exc:
                if not ready.done():
                    ready.set_exception(exc)
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name="relay", daemon=True)
        self._thread.start()
        self.port = ready.result(timeout=10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_SESSION = web.AppKey("session", aiohttp.ClientSession)
