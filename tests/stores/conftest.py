"""Store backends for direct reads (``[upstream] direct_stores``, docs/behaviour.md).

:func:`store` runs each test of the contract suite against every backend:
``file://`` on files under ``tmp_path``, ``http://`` on a small aiohttp server
(``web.FileResponse``, which answers Range requests with 206) over that same
directory, ``s3://`` on moto's S3 server (:func:`s3_server`), ``swift+http://`` on a real
single-node Swift with tempauth (:func:`local_swift`).
:func:`locations_glance` is a real Glance with ``show_multiple_locations`` on,
so its records carry ``locations`` naming its file store.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from edgecache.upstream.stores import FileStore, HttpStore, StoreBackend
from lab.glance import LocalGlance, ensure_glance_venv
from lab.motos3 import MotoS3, moto_s3
from lab.procs import alive
from lab.swift import LocalSwift, ensure_swift_venv
from lab.venvs import default_state_root


@dataclass(frozen=True)
class StoreUnderTest:
    """A backend and how to place an object where it reads."""

    backend: StoreBackend
    #: store ``data`` under ``name``; the URL the backend reads it at
    put: Callable[[str, bytes], str]
    #: a URL of the backend's scheme naming no object
    missing: str


@pytest.fixture(params=["file", "http", "s3", "swift"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, aiohttp_server: AiohttpServer
) -> AsyncIterator[StoreUnderTest]:
    root = tmp_path / "objects"
    root.mkdir()

    def write(name: str, data: bytes) -> Path:
        path = root / name
        path.write_bytes(data)
        return path

    if request.param == "s3":
        from edgecache.upstream.stores.s3 import S3Store

        s3: MotoS3 = request.getfixturevalue("s3_server")
        prefix = uuid.uuid4().hex
        yield StoreUnderTest(
            S3Store(),
            lambda name, data: s3.put("images", f"{prefix}-{name}", data),
            s3.url("images", f"{prefix}-missing"),
        )
        return

    if request.param == "swift":
        from edgecache.upstream.stores.swift import SwiftStore

        swift: LocalSwift = request.getfixturevalue("local_swift")
        prefix = uuid.uuid4().hex
        async with aiohttp.ClientSession() as session:
            def put(name: str, data: bytes) -> str:
                swift.put_object("images", f"{prefix}-{name}", data)
                return swift.location("images", f"{prefix}-{name}")

            yield StoreUnderTest(
                SwiftStore(session), put, swift.location("images", f"{prefix}-missing")
            )
        return

    if request.param == "file":
        yield StoreUnderTest(
            FileStore(),
            lambda name, data: write(name, data).as_uri(),
            (root / "missing").as_uri(),
        )
        return

    async def serve(req: web.Request) -> web.StreamResponse:
        path = root / req.match_info["name"]
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    app = web.Application()
    app.router.add_get("/objects/{name}", serve)
    server = await aiohttp_server(app)
    base = str(server.make_url("/objects/"))
    async with aiohttp.ClientSession() as session:
        yield StoreUnderTest(
            HttpStore(session),
            lambda name, data: base + write(name, data).name,
            base + "missing",
        )


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
