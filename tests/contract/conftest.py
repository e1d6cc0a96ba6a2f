"""The backends the contract suites run against in the fast tier.

:func:`store` runs each store contract test against ``file://`` (files under
``tmp_path``), ``http://`` (a small aiohttp server: ``web.FileResponse``
answers Range requests with 206) and ``s3://`` (moto's S3 server,
lab/motos3.py). A real Swift is a slow system: the same suite runs
against it from tests/stores/test_contract.py.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from edgecache.upstream.stores.allow import StoreAllowlist
from edgecache.upstream.stores.file import FileStore
from edgecache.upstream.stores.http import HttpStore
from lab.motos3 import MotoS3, moto_s3
from tests.contract.stores import StoreUnderTest


@pytest.fixture(params=["file", "http", "s3"])
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

        s3: MotoS3 = request.getfixturevalue("contract_s3")
        prefix = uuid.uuid4().hex
        yield StoreUnderTest(
            S3Store(allow=StoreAllowlist([s3.endpoint + "/images/"])),
            lambda name, data: s3.put("images", f"{prefix}-{name}", data),
            s3.url("images", f"{prefix}-missing"),
        )
        return

    if request.param == "file":
        yield StoreUnderTest(
            FileStore(allow=StoreAllowlist([root.as_uri() + "/"])),
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
            HttpStore(session, allow=StoreAllowlist([base])),
            lambda name, data: base + write(name, data).name,
            base + "missing",
        )


@pytest.fixture(scope="session")
def contract_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """moto's S3 server on 127.0.0.1 with an ``images`` bucket, for the whole session."""
    pytest.importorskip("aiobotocore", reason="the s3 extra is not installed")
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    with moto_s3(tmp_path_factory.mktemp("moto") / "moto.log", "images") as server:
        yield server
