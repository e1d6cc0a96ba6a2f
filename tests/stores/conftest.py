"""The slow stores for direct reads (``[upstream] direct_stores``, docs/behaviour.md).

:func:`s3_server` is moto's S3 server and :func:`local_swift` a real single-node
Swift with tempauth; the in-process backends run the store contract in
tests/contract. :func:`locations_glance` is a real Glance with
``show_multiple_locations`` on, so its records carry ``locations`` naming its
file store. :func:`http_store_glance` is one that also takes ``http://``
locations, which it reads through :func:`store_proxy`: so a test can tell
edgecache's requests to a location's server from Glance's own (it sends none)."""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lab.glance import LocalGlance, ensure_glance_venv
from lab.motos3 import MotoS3, moto_s3
from lab.procs import alive
from lab.swift import LocalSwift, ensure_swift_venv
from lab.venvs import default_state_root


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """moto's S3 server on 127.0.0.1 with an ``images`` bucket (lab/motos3.py)."""
    pytest.importorskip("aiobotocore", reason="the s3 extra is not installed")
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    with moto_s3(tmp_path_factory.mktemp("moto") / "moto.log", "images") as server:
        yield server


@pytest.fixture(scope="session")
def local_swift() -> Iterator[LocalSwift]:
    """A real single-node Swift (tempauth) on 127.0.0.1 (lab/swift.py)."""
    venv = ensure_swift_venv(default_state_root())
    unique = f"swift-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    state = default_state_root() / "tests" / unique
    swift = LocalSwift(state, venv)
    try:
        with swift:
            pids = swift.pids()
            yield swift
        assert not [pid for pid in pids if alive(pid)], \
            "Swift processes were left behind"
    finally:
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def locations_glance() -> Iterator[LocalGlance]:
    """A real Glance whose image records list their file-store ``locations``."""
    venv = ensure_glance_venv(default_state_root())
    unique = f"stores-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    state = default_state_root() / "tests" / unique
    glance = LocalGlance(state, venv, flavor="", show_multiple_locations=True)
    try:
        with glance:
            yield glance
        assert not glance.process_group(), "Glance processes were left behind"
    finally:
        shutil.rmtree(state, ignore_errors=True)


class StoreProxy(ThreadingHTTPServer):
    """A forward HTTP proxy that answers from ``objects`` (absolute URL → bytes) itself.

    Glance's http store reaches its locations through it (glance_store's
    ``http_proxy_information``), so the servers the locations name never hear
    from Glance. ``requests`` logs (method, absolute URL) of what Glance asked.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    server: StoreProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, with_body: bool) -> None:
        self.server.requests.append((self.command, self.path))
        data = self.server.objects.get(self.path)
        self.send_response(200 if data is not None else 404)
        self.send_header("Content-Length", str(len(data) if data is not None else 0))
        self.end_headers()
        if with_body and data is not None:
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def do_GET(self) -> None:
        self._answer(with_body=True)


@pytest.fixture(scope="module")
def store_proxy() -> Iterator[StoreProxy]:
    proxy = StoreProxy()
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(5)


@dataclass
class _HttpStoreGlance(LocalGlance):
    """glance_store's ``file`` and ``http`` stores; http locations read through ``proxy``."""

    proxy: str = field(default="")

    def _store_options(self) -> str:
        return ("stores = file,http\ndefault_store = file\n"
                f"http_proxy_information = http:{self.proxy}")

    def _write_config(self) -> None:
        super()._write_config()
        # Glance refuses http locations on loopback (and on ports but 80 and 443)
        # unless its import filter allows them (LP #2161330).
        conf = self.etc_dir / "glance-api.conf"
        conf.write_text(conf.read_text() + "\n[import_filtering_opts]\n"
                        "allowed_hosts = [127.0.0.1]\nallowed_ports = []\n")


@pytest.fixture(scope="module")
def http_store_glance(store_proxy: StoreProxy) -> Iterator[LocalGlance]:
    """A real Glance that takes ``http://`` locations (``show_multiple_locations``)."""
    venv = ensure_glance_venv(default_state_root())
    unique = f"http-store-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    state = default_state_root() / "tests" / unique
    glance = _HttpStoreGlance(state, venv, flavor="", show_multiple_locations=True,
                              proxy=store_proxy.url)
    try:
        with glance:
            yield glance
        assert not glance.process_group(), "Glance processes were left behind"
    finally:
        shutil.rmtree(state, ignore_errors=True)
