"""Swift behind a real Keystone, read with a real ``[upstream_auth]`` session.

test_swift.py covers the Keystone path with a stand-in session over tempauth;
here every piece is real: a Keystone 30 (lab/keystone.py) with an
``object-store`` service in its catalog, and a Swift whose proxy runs
keystonemiddleware's ``authtoken`` and Swift's ``keystoneauth`` instead of
tempauth. Glance's store user ``glance`` holds ``member`` on project
``glance-store``; its object lives in that project's ``AUTH_<project id>``
account, which SwiftStore finds in the catalog of the session that
:func:`edgecache.daemon.config.load` builds from ``[upstream_auth]``.

See docs/behaviour.md#tiers-and-stores.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from edgecache.daemon import config
from edgecache.errors import NotFound
from edgecache.model import ImageBody
from edgecache.upstream.stores.allow import StoreAllowlist
from edgecache.upstream.stores.swift import KeystoneSession, SwiftStore
from lab.edgecache import EdgecacheConfig
from lab.keystone import LocalKeystone, ensure_keystone_venv
from lab.procs import alive
from lab.swift import KeystoneAuth, LocalSwift, ensure_swift_venv
from lab.units import MiB
from lab.venvs import default_state_root

STORE_USER = "glance"
STORE_PASSWORD = "glance-store-pw"
STORE_PROJECT = "glance-store"
CONTAINER = "glance"


async def read_all(body: ImageBody) -> bytes:
    try:
        return b"".join([chunk async for chunk in body.chunks()])
    finally:
        body.close()


@dataclass(frozen=True)
class KeystoneSwift:
    keystone: LocalKeystone
    swift: LocalSwift
    #: the store user's project, whose account holds the images
    project_id: str

    @property
    def account(self) -> str:
        return self.swift.storage_url_of(self.project_id)

    def token(self) -> str:
        return self.keystone.issue_token(STORE_USER, STORE_PASSWORD, STORE_PROJECT)

    def put(self, name: str, data: bytes) -> None:
        """Upload as the store user, with its Keystone token."""
        token = self.token()
        for url, body in ((f"{self.account}/{CONTAINER}", b""),
                          (f"{self.account}/{CONTAINER}/{name}", data)):
            status = self.swift.request("PUT", url, token, body=body)[0]
            assert status in (201, 202), f"PUT {url} answered {status}"

    def location(self, name: str) -> str:
        """A single-tenant glance_store location: the Keystone auth address, no storage URL."""
        user = urllib.parse.quote(f"{STORE_PROJECT}:{STORE_USER}", safe="")
        address = self.keystone.auth_url.split("://", 1)[1]
        return f"swift+http://{user}:{STORE_PASSWORD}@{address}/{CONTAINER}/{name}"

    def upstream_auth(self, tmp_path: Path) -> KeystoneSession:
        """The keystoneauth1 session edgecache builds from its ``[upstream_auth]`` section."""
        ks = self.keystone
        conf = EdgecacheConfig(
            glance_endpoints=["http://127.0.0.1:9"], cache_dir=tmp_path / "cache",
            options={
                "DEFAULT": {"auth_strategy": "keystone"},
                "keystone_authtoken": ks.credentials(),
                "upstream_auth": ks.credentials(STORE_USER, STORE_PASSWORD, STORE_PROJECT),
            },
        ).write(tmp_path / "edgecache.conf")
        session = config.load(["--config-file", str(conf)]).prefetch.upstream_auth
        assert session is not None
        return session


@pytest.fixture(scope="module")
def keystone_swift() -> Iterator[KeystoneSwift]:
    root = default_state_root()
    ks_venv = ensure_keystone_venv(root)
    swift_venv = ensure_swift_venv(root)
    unique = f"swift-ks-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    state = root / "tests" / unique
    keystone = LocalKeystone(state / "keystone", ks_venv)
    pids: list[int] = []
    try:
        with keystone:
            project_id = keystone.create_project(STORE_PROJECT)
            keystone.create_user(STORE_USER, STORE_PASSWORD, project_id, "member")
            swift = LocalSwift(state / "swift", swift_venv, KeystoneAuth(
                keystone.auth_url, "admin", keystone.admin_password, "admin"))
            # Keystone puts the scoped project's id in the URL of each catalog it issues.
            keystone.register_service("object-store", "swift",
                                      f"{swift.url}/v1/AUTH_%(project_id)s")
            with swift:
                pids = swift.pids()
                yield KeystoneSwift(keystone, swift, project_id)
        assert keystone.pid is None
        assert not [pid for pid in pids if alive(pid)], \
            "Swift processes were left behind"
    finally:
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
async def store(keystone_swift: KeystoneSwift, tmp_path: Path) -> AsyncIterator[SwiftStore]:
    async with aiohttp.ClientSession() as session:
        yield SwiftStore(session, keystone_swift.upstream_auth(tmp_path),
                         allow=StoreAllowlist([keystone_swift.swift.url + "/"]))


def test_swift_refuses_requests_without_a_valid_keystone_token(
    keystone_swift: KeystoneSwift,
) -> None:
    ks = keystone_swift
    name = uuid.uuid4().hex
    ks.put(name, b"private")
    url = f"{ks.account}/{CONTAINER}/{name}"
    assert ks.swift.request("GET", url, ks.token())[0] == 200
    assert ks.swift.request("GET", url)[0] == 401
    assert ks.swift.request("GET", url, "not-a-keystone-token")[0] == 401
    # tempauth is not in the pipeline: its v1 handshake finds nothing
    assert ks.swift.request("GET", f"{ks.swift.url}/auth/v1.0", headers={
        "X-Auth-User": "test:tester", "X-Auth-Key": "testing"})[0] // 100 != 2


async def test_a_full_read_through_the_catalog(
    keystone_swift: KeystoneSwift, store: SwiftStore
) -> None:
    data = os.urandom(3 * MiB + 5)
    name = uuid.uuid4().hex
    keystone_swift.put(name, data)
    body = await store.open(keystone_swift.location(name))
    assert (body.start, body.content_length) == (0, len(data))
    assert await read_all(body) == data


@pytest.mark.parametrize("offset", [1, MiB, 3 * MiB + 4])
async def test_a_ranged_read_starts_at_the_offset(
    keystone_swift: KeystoneSwift, store: SwiftStore, offset: int
) -> None:
    data = os.urandom(3 * MiB + 5)
    name = uuid.uuid4().hex
    keystone_swift.put(name, data)
    body = await store.open(keystone_swift.location(name), offset)
    assert (body.start, body.content_length) == (offset, len(data) - offset)
    assert await read_all(body) == data[offset:]


async def test_a_missing_object_is_not_found(
    keystone_swift: KeystoneSwift, store: SwiftStore
) -> None:
    missing = keystone_swift.location(f"{uuid.uuid4().hex}-missing")
    with pytest.raises(NotFound):
        await store.open(missing)
    with pytest.raises(NotFound):
        await store.open(missing, 10)
