"""FaultyGlance: a fault-injecting fake of the Glance v2 calls edgecache makes.

A real Glance cannot cut a body after N bytes, trickle it, stall, lie about a
hash or answer close-delimited on demand; this aiohttp test server can. It
serves (docs/glance-wire.md):

* ``GET /`` (300) and ``GET /versions`` (200): the version document, links
  pointing at the fake itself;
* ``GET /v2/images/{id}``: Glance-shaped metadata, 404 when unknown;
* ``GET|HEAD /v2/images/{id}/file``: the bytes, with exactly
  ``Content-Type: application/octet-stream``, ``Content-Length``, hex
  ``Content-MD5`` (when the image has a checksum) and ``x-openstack-request-id``;
  one ``Range`` (``a-b``, ``a-``, ``-n``) gives 206 + ``Content-Range``, a comma
  400, an unsatisfiable one 416; images without data (queued, saving, ...) 204,
  deactivated ones 403;
* ``DELETE /v2/images/{id}``: 204 and the image is gone;
* everything else: recorded and echoed as JSON (path, method, query, the
  interesting headers; for PUT/POST/PATCH the body length, sha256 and framing),
  unless a canned answer was registered with :meth:`FaultyGlance.stub`.

Faults (:class:`Fault`) are set per image, combine freely and may be limited to
the next *n* requests (``times``). Every request is appended to
:attr:`FaultyGlance.requests`.

Use it inside a test's event loop (``async with FaultyGlance() as fg``, or the
:func:`faulty_glance` fixture), or in a background thread with its own loop
(``start_in_thread()`` / ``stop_thread()``, ``with FaultyGlance() as fg``, or
the :func:`faulty_glance_thread` fixture) when the code under test runs in a
subprocess and is driven by blocking clients.

Two aiohttp details matter here:

* **Close-delimited body.** aiohttp turns on chunked transfer coding for every
  HTTP/1.1 response without a Content-Length. The only switch that skips it is
  the private ``StreamResponse._length_check`` flag (what ``WebSocketResponse``
  and ``FileResponse``'s 304 path turn off), so :class:`_CloseDelimitedResponse`
  sets it to False and calls ``force_close()``: the headers carry neither
  Content-Length nor Transfer-Encoding but ``Connection: close``, the body goes
  out raw, and aiohttp closes the connection after ``write_eof()``.
* **Abrupt cut.** ``transport.abort()`` drops whatever still sits in asyncio's
  write buffer, so the cut first waits for that buffer to drain, which makes
  "N bytes, then the connection is gone" exact. The kernel then still delivers
  its queued bytes and ends with a FIN (the request was read in full), so the
  client sees EOF before Content-Length: aiohttp raises ``ClientPayloadError``.
  ``cut_reset=True`` waits until the peer has acknowledged every byte and sets
  ``SO_LINGER`` to 0 first, so the close is an RST (``ECONNRESET``) instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import enum
import fcntl
import hashlib
import json
import re
import socket
import struct
import termios
import threading
import uuid
from collections.abc import AsyncIterator, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Final, Literal, NamedTuple, Self

import pytest
from aiohttp import web

__all__ = [
    "AUTO",
    "DEFAULT_SLICE",
    "Fault",
    "FaultyGlance",
    "RecordedRequest",
    "Stub",
    "faulty_glance",
    "faulty_glance_thread",
]

DEFAULT_SLICE: Final = 256 * 1024
"""Body bytes handed to the transport per write (unless ``trickle_chunk`` says otherwise)."""

_ECHO_BODY_MAX: Final = 64 * 1024
_FLUSH_TIMEOUT: Final = 5.0
_POLL: Final = 0.002

# Statuses for which Glance has no data to serve: /file answers 204 (glance/location.py).
_NO_DATA_STATUSES: Final = frozenset({"queued", "saving", "uploading", "importing", "killed"})
_GONE_STATUSES: Final = frozenset({"deleted", "pending_delete"})

_VERSIONS: Final = (
    ("v2.17", "CURRENT"),
    ("v2.15", "SUPPORTED"),
    ("v2.9", "SUPPORTED"),
    ("v2.7", "SUPPORTED"),
    ("v2.6", "SUPPORTED"),
    ("v2.5", "SUPPORTED"),
    ("v2.4", "SUPPORTED"),
    ("v2.3", "SUPPORTED"),
    ("v2.2", "SUPPORTED"),
    ("v2.1", "SUPPORTED"),
    ("v2.0", "SUPPORTED"),
)

_IMAGE_PATH = re.compile(r"^/v2/images/(?P<id>[^/]+)(?P<file>/file)?/?$")
_RANGE = re.compile(r"^bytes=(?P<start>\d*)-(?P<end>\d*)$")


class _Auto(enum.Enum):
    AUTO = "auto"


AUTO: Final = _Auto.AUTO
"""Default of :meth:`FaultyGlance.add_image`'s hash/size arguments: computed from the data."""


@dataclass(frozen=True)
class Fault:
    """What to break for one image. All fields are optional and combine.

    Body faults count bytes of the response body (so of the range on a 206).
    """

    wrong_hash: bool = False
    """Serve the bytes with the one at offset ``len(data) // 2`` flipped; metadata keeps the
    right hashes. Ranges covering that offset get the flipped byte too."""
    cut_after: int | None = None
    """Send this many body bytes, then abort the connection (Content-Length announced the full
    length). With ``no_content_length`` the client just sees an early, clean EOF."""
    cut_reset: bool = False
    """With ``cut_after``: end with an RST (SO_LINGER 0) rather than a FIN."""
    trickle_chunk: int = 0
    """Write the body in pieces of this size (0: the server's slice size)."""
    trickle_delay: float = 0.0
    """Sleep this long between two pieces."""
    stall_after: int | None = None
    """Send this many body bytes, then hang without closing (until the client goes away or the
    server stops)."""
    no_content_length: bool = False
    """Close-delimited body: neither Content-Length nor chunked coding, ``Connection: close``
    (what Glance with its own cache sends on a miss)."""
    status: int | None = None
    """Answer ``/file`` with this status and a Glance-like error body."""
    metadata_status: int | None = None
    """Answer ``GET /v2/images/{id}`` with this status and a Glance-like error body."""
    delay: float = 0.0
    """Sleep this long before answering ``/file`` at all (time to first byte)."""
    ignore_range: bool = False
    """Answer a ranged ``/file`` GET with the whole image and a 200, as servers that do not
    support ranges do."""
    times: int | None = None
    """Apply to this many requests, then clear the fault (None: until changed). A request uses
    one when it is a metadata GET and ``metadata_status`` is set, or a ``/file`` GET and any
    other field is set."""

    def __post_init__(self) -> None:
        for name in ("cut_after", "stall_after", "times"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.trickle_chunk < 0 or self.trickle_delay < 0 or self.delay < 0:
            raise ValueError("trickle_chunk, trickle_delay and delay must be >= 0")

    @property
    def affects_file(self) -> bool:
        """Whether this fault changes ``/file`` answers."""
        return (
            self.wrong_hash
            or self.cut_after is not None
            or self.trickle_chunk > 0
            or self.trickle_delay > 0
            or self.stall_after is not None
            or self.no_content_length
            or self.status is not None
            or self.delay > 0
            or self.ignore_range
        )


_NO_FAULT: Final = Fault()


class RecordedRequest(NamedTuple):
    """One request as it arrived. ``headers`` has lower-cased names; ``path`` has no query."""

    method: str
    path: str
    headers: dict[str, str]
    range: str | None


@dataclass(frozen=True)
class Stub:
    """A canned answer for one method and path (see :meth:`FaultyGlance.stub`)."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Image:
    data: bytes
    meta: dict[str, Any]
    readers: frozenset[str] | None
    #: when set, only these tokens may download (others who may see it: 403)
    downloaders: frozenset[str] | None = None
    fault: Fault | None = None
    fault_left: int | None = None


class _CloseDelimitedResponse(web.StreamResponse):
    """An HTTP/1.1 response whose body ends when the connection closes.

    aiohttp switches to chunked coding for any HTTP/1.1 response without a
    Content-Length; ``_length_check = False`` (private, the switch WebSocketResponse
    uses) skips that, so no Content-Length and no Transfer-Encoding are sent.
    Callers must also ``force_close()`` so aiohttp closes after ``write_eof()``.
    """

    _length_check = False


def _isotime(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> str:
    return _isotime(dt.datetime.now(dt.UTC))


def _request_id(request: web.BaseRequest) -> str:
    """Glance adopts the caller's request id, adding ``req-`` when missing."""
    given = request.headers.get("X-OpenStack-Request-ID")
    if given:
        return given if given.startswith("req-") else f"req-{given}"
    return f"req-{uuid.uuid4()}"


def _error(
    status: int,
    message: str,
    request_id: str,
    *,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """A Glance-like error answer: JSON whose top-level value has a ``message``."""
    out = {"x-openstack-request-id": request_id, **(headers or {})}
    if status == 401:
        out.setdefault("WWW-Authenticate", 'Keystone uri="http://127.0.0.1:5000"')
    if status < 200 or status in (204, 304):
        return web.Response(status=status, headers=out)
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body = {"error": {"code": status, "title": title, "message": message}}
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=out,
    )


def _json(status: int, payload: Any, request_id: str) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(payload).encode(),
        content_type="application/json",
        headers={"x-openstack-request-id": request_id},
    )


def is_download_probe(range_header: str | None) -> bool:
    """edgecache's ``download_image`` check: a one-byte ``GET /file``."""
    return range_header is not None and range_header.replace(" ", "") == "bytes=0-0"


def _parse_range(value: str, size: int) -> tuple[int, int] | int:
    """Glance/webob single-range semantics: (start, stop) with stop exclusive, or a status.

    A comma gives 400; an unparsable range, or one starting at or past the end, 416.
    A suffix ``-n`` with ``n >= size`` covers the whole image (the offset stays 0).
    """
    if "," in value:
        return 400
    match = _RANGE.match(value.strip().replace(" ", ""))
    if match is None:
        return 416
    first, last = match["start"], match["end"]
    if first == "" and last == "":
        return 416
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            return 416
        return (max(size - suffix, 0), size)
    start = int(first)
    if start >= size:
        return 416
    if last == "":
        return (start, size)
    end = int(last)
    if end < start:
        return 416
    return (start, min(end + 1, size))


async def _flush(transport: asyncio.Transport) -> None:
    """Wait (bounded) until asyncio's write buffer has gone to the kernel."""
    for _ in range(int(_FLUSH_TIMEOUT / _POLL)):
        if transport.is_closing() or transport.get_write_buffer_size() == 0:
            return
        await asyncio.sleep(_POLL)


def _unacked(sock: Any) -> int:
    """Bytes the kernel has not had acknowledged yet (Linux SIOCOUTQ)."""
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int(struct.unpack("i", raw)[0])


async def _reset(transport: asyncio.Transport) -> None:
    """Abort with an RST, after the peer's kernel has every byte sent so far."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            for _ in range(int(_FLUSH_TIMEOUT / _POLL)):
                if _unacked(sock) == 0:
                    break
                await asyncio.sleep(_POLL)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class FaultyGlance:
    """The fake Glance. Mutators are thread-safe, so thread mode can be driven from tests."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        slice_size: int = DEFAULT_SLICE,
        shutdown_timeout: float = 2.0,
    ) -> None:
        if slice_size <= 0:
            raise ValueError("slice_size must be > 0")
        self.requests: list[RecordedRequest] = []
        #: the (host, port) of every client connection a request arrived on
        self._peers: set[tuple[str, int]] = set()
        self.slice_size = slice_size
        self._host = host
        self._port = port
        self._shutdown_timeout = shutdown_timeout
        self._images: dict[str, _Image] = {}
        self._stubs: dict[tuple[str, str], Stub] = {}
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ images

    def add_image(
        self,
        data: bytes,
        *,
        image_id: str | None = None,
        status: str = "active",
        os_hash_algo: str | None = "sha512",
        os_hash_value: str | _Auto | None = AUTO,
        checksum: str | _Auto | None = AUTO,
        size: int | _Auto | None = AUTO,
        fault: Fault | None = None,
        name: str | None = None,
        visibility: str = "public",
        owner: str = "00000000000000000000000000000000",
        readers: Collection[str] | None = None,
        downloaders: Collection[str] | None = None,
        properties: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Add (or replace) an image and return a copy of its metadata.

        ``AUTO`` hash and size arguments are computed from ``data`` (null while ``status``
        is one without data, like Glance); pass a value to make the metadata lie, or None
        for a null field. ``readers``: when set, only these ``X-Auth-Token`` values may see
        the image (others get 404, no token 401). ``downloaders``: when set, only these
        tokens may download it (Glance's ``download_image`` policy: the others get 403 on
        ``/file``). ``properties`` are extra top-level fields.
        """
        data = bytes(data)
        image_id = image_id or str(uuid.uuid4())
        has_data = status not in _NO_DATA_STATUSES
        if isinstance(os_hash_value, _Auto):
            os_hash_value = (
                hashlib.new(os_hash_algo, data).hexdigest() if has_data and os_hash_algo else None
            )
        if isinstance(checksum, _Auto):
            checksum = hashlib.md5(data, usedforsecurity=False).hexdigest() if has_data else None
        if isinstance(size, _Auto):
            size = len(data) if has_data else None
        now = _now()
        meta: dict[str, Any] = {
            "id": image_id,
            "name": name if name is not None else f"image-{image_id[:8]}",
            "disk_format": "raw",
            "container_format": "bare",
            "visibility": visibility,
            "size": size,
            "virtual_size": None,
            "status": status,
            "checksum": checksum,
            "protected": False,
            "min_ram": 0,
            "min_disk": 0,
            "owner": owner,
            "os_hidden": False,
            "os_hash_algo": os_hash_algo if has_data else None,
            "os_hash_value": os_hash_value,
            "created_at": now,
            "updated_at": now,
            "tags": [],
            "self": f"/v2/images/{image_id}",
            "file": f"/v2/images/{image_id}/file",
            "schema": "/v2/schemas/image",
            **(properties or {}),
        }
        image = _Image(
            data=data,
            meta=meta,
            readers=frozenset(readers) if readers is not None else None,
            downloaders=frozenset(downloaders) if downloaders is not None else None,
        )
        with self._lock:
            self._images[image_id] = image
            self._set_fault_locked(image, fault)
            return dict(meta)

    def update_image(self, image_id: str, **fields: Any) -> dict[str, Any]:
        """Change metadata fields (e.g. ``status="deactivated"``); bumps ``updated_at``."""
        with self._lock:
            image = self._get_locked(image_id)
            image.meta.update(fields)
            if "updated_at" not in fields:
                image.meta["updated_at"] = _now()
            return dict(image.meta)

    def metadata(self, image_id: str) -> dict[str, Any]:
        """A copy of an image's metadata."""
        with self._lock:
            return dict(self._get_locked(image_id).meta)

    def set_fault(self, image_id: str, fault: Fault | None) -> None:
        """Replace the image's fault (None: serve it correctly again)."""
        with self._lock:
            self._set_fault_locked(self._get_locked(image_id), fault)

    def remove_image(self, image_id: str) -> None:
        """Forget the image (later requests get 404). Unknown ids are ignored."""
        with self._lock:
            self._images.pop(image_id, None)

    def has_image(self, image_id: str) -> bool:
        with self._lock:
            return image_id in self._images

    def stub(
        self,
        method: str,
        path: str,
        *,
        status: int = 200,
        json_body: Any = None,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer ``method path`` (exact path, no query) with a canned response.

        Stubs win over the built-in routes, so they can also override them.
        """
        out = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            out.setdefault("Content-Type", "application/json")
        with self._lock:
            self._stubs[(method.upper(), path)] = Stub(status=status, body=body, headers=out)

    def clear_stubs(self) -> None:
        with self._lock:
            self._stubs.clear()

    # ----------------------------------------------------------------- request log

    def probes(self, path: str) -> int:
        """How many download checks (``GET path`` with ``Range: bytes=0-0``) arrived."""
        with self._lock:
            return sum(1 for r in self.requests
                       if r.method == "GET" and r.path == path and is_download_probe(r.range))

    def count(self, method: str, path: str) -> int:
        """How many ``method path`` requests arrived (path without query), download checks
        (:meth:`probes`) aside: a data GET is what the counts mean."""
        method = method.upper()
        with self._lock:
            return sum(1 for r in self.requests if r.method == method and r.path == path
                       and not (method == "GET" and is_download_probe(r.range)))

    def connections(self) -> int:
        """How many client connections requests arrived on (distinct peer addresses)."""
        with self._lock:
            return len(self._peers)

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()
            self._peers.clear()

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:<port>`` (no trailing slash)."""
        if self._url is None:
            raise RuntimeError("FaultyGlance is not running")
        return self._url

    def file_url(self, image_id: str) -> str:
        return f"{self.url}/v2/images/{image_id}/file"

    async def start(self) -> str:
        """Listen in the running event loop; returns :attr:`url`."""
        if self._runner is not None:
            raise RuntimeError("FaultyGlance is already running")
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # handler_cancellation: a handler stalled on a fault goes away with its client.
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            shutdown_timeout=self._shutdown_timeout,
            access_log=None,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = runner.addresses[0][1]
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._url = f"http://{host}:{port}"
        return self._url

    async def close(self) -> None:
        """Stop listening; stalled responses are aborted."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._stopping is not None:
            self._stopping.set()
        try:
            await runner.cleanup()
        finally:
            self._url = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def start_in_thread(self, timeout: float = 10.0) -> str:
        """Run the server in a daemon thread with its own event loop; returns :attr:`url`."""
        if self._thread is not None or self._runner is not None:
            raise RuntimeError("FaultyGlance is already running")
        ready: concurrent.futures.Future[str] = concurrent.futures.Future()
        thread = threading.Thread(
            target=self._thread_main, args=(ready,), name="faultyglance", daemon=True
        )
        thread.start()
        try:
            url = ready.result(timeout)
        except BaseException:
            self._stop_loop(thread)
            raise
        self._thread = thread
        return url

    def stop_thread(self, timeout: float = 10.0) -> None:
        """Stop a server started with :meth:`start_in_thread` (no-op when not running)."""
        thread, self._thread = self._thread, None
        loop = self._thread_loop
        if thread is None or loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.close(), loop).result(timeout)
        finally:
            self._stop_loop(thread, timeout)

    def __enter__(self) -> Self:
        self.start_in_thread()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_thread()

    def _thread_main(self, ready: concurrent.futures.Future[str]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            try:
                url = loop.run_until_complete(self.start())
            except BaseException as exc:
                ready.set_exception(exc)
                return
            self._thread_loop = loop
            ready.set_result(url)
            loop.run_forever()
            loop.run_until_complete(self.close())  # in case the loop was stopped directly
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            self._thread_loop = None
            asyncio.set_event_loop(None)
            loop.close()

    def _stop_loop(self, thread: threading.Thread, timeout: float = 10.0) -> None:
        loop = self._thread_loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # already closed
                loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)

    # ------------------------------------------------------------------ internals

    def _get_locked(self, image_id: str) -> _Image:
        try:
            return self._images[image_id]
        except KeyError:
            raise KeyError(f"no image {image_id!r} in FaultyGlance") from None

    @staticmethod
    def _set_fault_locked(image: _Image, fault: Fault | None) -> None:
        if fault is not None and fault.times == 0:
            fault = None
        image.fault = fault
        image.fault_left = fault.times if fault is not None else None

    def _take_fault(self, image: _Image, kind: Literal["metadata", "file"], consume: bool) -> Fault:
        with self._lock:
            fault = image.fault
            if fault is None:
                return _NO_FAULT
            applies = (
                fault.metadata_status is not None if kind == "metadata" else fault.affects_file
            )
            if not applies:
                return _NO_FAULT
            if consume and image.fault_left is not None:
                image.fault_left -= 1
                if image.fault_left <= 0:
                    image.fault = None
                    image.fault_left = None
            return fault

    def _lookup(self, request: web.Request, image_id: str, rid: str) -> _Image | web.Response:
        with self._lock:
            image = self._images.get(image_id)
        if image is None or image.meta.get("status") in _GONE_STATUSES:
            return _error(404, f"No image found with ID {image_id}", rid)
        if image.readers is not None:
            token = request.headers.get("X-Auth-Token")
            if not token:
                return _error(401, "The request you have made requires authentication.", rid)
            if token not in image.readers:
                return _error(404, f"No image found with ID {image_id}", rid)
        return image

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path, method = request.path, request.method
        peer = request.transport.get_extra_info("peername") if request.transport else None
        with self._lock:
            if peer is not None:
                self._peers.add((peer[0], peer[1]))
            self.requests.append(
                RecordedRequest(
                    method=method,
                    path=path,
                    headers={k.lower(): v for k, v in request.headers.items()},
                    range=request.headers.get("Range"),
                )
            )
            stub = self._stubs.get((method, path))
        rid = _request_id(request)
        if stub is not None:
            headers = {"x-openstack-request-id": rid, **stub.headers}
            return web.Response(status=stub.status, body=stub.body or None, headers=headers)
        if method == "GET" and path == "/":
            return self._versions(request, 300, rid)
        if method == "GET" and path.rstrip("/") == "/versions":
            return self._versions(request, 200, rid)
        match = _IMAGE_PATH.match(path)
        if match is not None:
            image_id = match["id"]
            if match["file"] and method in ("GET", "HEAD"):
                return await self._file(request, image_id, rid)
            if not match["file"] and method == "GET":
                return self._show(request, image_id, rid)
            if not match["file"] and method == "DELETE":
                return self._delete(request, image_id, rid)
        return await self._echo(request, rid)

    def _versions(self, request: web.Request, status: int, rid: str) -> web.Response:
        href = f"{request.url.origin()}/v2/"
        doc = {
            "versions": [
                {"id": vid, "status": vstatus, "links": [{"rel": "self", "href": href}]}
                for vid, vstatus in _VERSIONS
            ]
        }
        return _json(status, doc, rid)

    def _show(self, request: web.Request, image_id: str, rid: str) -> web.Response:
        found = self._lookup(request, image_id, rid)
        if isinstance(found, web.Response):
            return found
        fault = self._take_fault(found, "metadata", consume=True)
        if fault.metadata_status is not None:
            return _error(fault.metadata_status, "Injected metadata fault", rid)
        with self._lock:
            meta = dict(found.meta)
        return _json(200, meta, rid)

    def _delete(self, request: web.Request, image_id: str, rid: str) -> web.Response:
        found = self._lookup(request, image_id, rid)
        if isinstance(found, web.Response):
            return found
        with self._lock:
            if self._images.get(image_id) is found:
                del self._images[image_id]
        return web.Response(status=204, headers={"x-openstack-request-id": rid})

    async def _file(self, request: web.Request, image_id: str, rid: str) -> web.StreamResponse:
        found = self._lookup(request, image_id, rid)
        if isinstance(found, web.Response):
            return found
        image = found
        if is_download_probe(request.headers.get("Range")):
            # edgecache's download check: Glance's verdict only, faults are for data GETs.
            fault = Fault()
        else:
            fault = self._take_fault(image, "file", consume=request.method == "GET")
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if image.downloaders is not None and \
                request.headers.get("X-Auth-Token") not in image.downloaders:
            return _error(403, "You are not authorized to complete download_image action.", rid)
        if fault.status is not None:
            return _error(fault.status, "Injected fault", rid)
        status = image.meta.get("status")
        if status == "deactivated":
            return _error(403, "The requested image has been deactivated.", rid)
        if status in _NO_DATA_STATUSES:
            return web.Response(status=204, headers={"x-openstack-request-id": rid})

        data = image.data
        size = len(data)
        headers = {"Content-Type": "application/octet-stream", "x-openstack-request-id": rid}
        checksum = image.meta.get("checksum")
        if checksum:
            headers["Content-MD5"] = str(checksum)
        start, stop, http_status = 0, size, 200
        range_header = request.headers.get("Range")
        if range_header is not None and not fault.ignore_range:
            parsed = _parse_range(range_header, size)
            if isinstance(parsed, int):
                extra = {"Content-Range": f"bytes */{size}"} if parsed == 416 else None
                return _error(parsed, f"Invalid Range: {range_header}", rid, headers=extra)
            start, stop = parsed
            http_status = 206
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"

        resp: web.StreamResponse
        if fault.no_content_length:
            resp = _CloseDelimitedResponse(status=http_status, headers=headers)
            resp.force_close()
        else:
            resp = web.StreamResponse(status=http_status, headers=headers)
            resp.content_length = stop - start
        await resp.prepare(request)  # StreamResponse sends the headers right away
        if request.method == "HEAD":
            await resp.write_eof()
            return resp
        await self._send_body(request, resp, data, start, stop, fault)
        return resp

    async def _send_body(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        data: bytes,
        start: int,
        stop: int,
        fault: Fault,
    ) -> None:
        total = stop - start
        cut = fault.cut_after if fault.cut_after is not None and fault.cut_after < total else None
        stall = (
            fault.stall_after
            if fault.stall_after is not None and fault.stall_after < total
            else None
        )
        if cut is not None and stall is not None:
            if cut <= stall:
                stall = None
            else:
                cut = None
        limit = start + (cut if cut is not None else stall if stall is not None else total)
        step = fault.trickle_chunk or self.slice_size
        flip = len(data) // 2 if fault.wrong_hash and data else None
        view = memoryview(data)
        pos = start
        while pos < limit:
            nxt = min(pos + step, limit)
            piece: bytes | bytearray | memoryview = view[pos:nxt]
            if flip is not None and pos <= flip < nxt:
                copy = bytearray(piece)
                copy[flip - pos] ^= 0xFF
                piece = copy
            await resp.write(piece)
            pos = nxt
            if fault.trickle_delay and pos < limit:
                await asyncio.sleep(fault.trickle_delay)

        transport = request.transport
        if cut is not None:
            if transport is not None:
                await _flush(transport)
                if fault.cut_reset:
                    await _reset(transport)
                else:
                    transport.abort()
            return
        if stall is not None:
            if transport is not None:
                await _flush(transport)
            assert self._stopping is not None
            await self._stopping.wait()
            if request.transport is not None:
                request.transport.abort()
            return
        await resp.write_eof()

    async def _echo(self, request: web.Request, rid: str) -> web.Response:
        headers = request.headers
        payload: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "raw_path": request.raw_path,
            "x-auth-token": headers.get("X-Auth-Token"),
            "x-service-token": headers.get("X-Service-Token"),
            "x-openstack-request-id": headers.get("X-OpenStack-Request-ID"),
            "headers": {k.lower(): v for k, v in headers.items()},
        }
        if request.method in ("PUT", "POST", "PATCH") or request.body_exists:
            digest = hashlib.sha256()
            length = 0
            head = bytearray()
            async for chunk in request.content.iter_chunked(self.slice_size):
                digest.update(chunk)
                length += len(chunk)
                if len(head) <= _ECHO_BODY_MAX:
                    head += chunk[: _ECHO_BODY_MAX + 1 - len(head)]
            payload["body_length"] = length
            payload["body_sha256"] = digest.hexdigest()
            payload["chunked"] = "chunked" in headers.get("Transfer-Encoding", "").lower()
            payload["content_length"] = request.content_length
            payload["body"] = (
                bytes(head).decode("utf-8", "replace") if length <= _ECHO_BODY_MAX else None
            )
        return _json(200, payload, rid)


@pytest.fixture
async def faulty_glance() -> AsyncIterator[FaultyGlance]:
    """A FaultyGlance in the test's event loop."""
    async with FaultyGlance() as server:
        yield server


@pytest.fixture
def faulty_glance_thread() -> Iterator[FaultyGlance]:
    """A FaultyGlance in a background thread (for blocking clients and subprocesses)."""
    server = FaultyGlance()
    server.start_in_thread()
    try:
        yield server
    finally:
        server.stop_thread()
