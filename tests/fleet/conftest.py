"""Upstream resilience and fleet topologies against a real Glance.

One real Glance 33 per session (noauth, no cache of its own), as in the
integration suite. :func:`glance_replica` starts further Glance API servers that
share its sqlite database and file store (the ``data`` directory is a symlink to
the session Glance's), so every replica serves the same images under the same
ids: several endpoints of one Glance deployment, any of which can be stopped.
edgecache runs as a process (:class:`lab.edgecache.EdgecacheProcess`); relays and
proxies between it and Glance come from :mod:`tests.support.relay`.

See docs/behaviour.md#upstream-faults.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.glance import LocalGlance, ensure_glance_venv
from lab.venvs import default_state_root


@dataclass(frozen=True)
class Image:
    """An active image in the session's Glance and the bytes it holds."""

    id: str
    size: int
    sha512: str
    data: bytes

    @property
    def file_path(self) -> str:
        return f"/v2/images/{self.id}/file"


ImageFactory = Callable[[int], Image]
ReplicaFactory = Callable[[], LocalGlance]


@pytest.fixture(scope="session")
def glance_venv() -> Path:
    return ensure_glance_venv(default_state_root())


@pytest.fixture(scope="session")
def fleet_state() -> Iterator[Path]:
    unique = f"fleet-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    state = default_state_root() / "tests" / unique
    try:
        yield state
    finally:
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def real_glance(glance_venv: Path, fleet_state: Path) -> Iterator[LocalGlance]:
    """The origin Glance for the session."""
    glance = LocalGlance(fleet_state / "origin", glance_venv, flavor="")
    with glance:
        yield glance
    assert not glance.process_group(), "Glance processes were left behind"


@pytest.fixture
def glance_replica(
    real_glance: LocalGlance, glance_venv: Path, fleet_state: Path
) -> Iterator[ReplicaFactory]:
    """Start more Glance API servers over the origin's database and store (stopped after)."""
    started: list[LocalGlance] = []

    def start() -> LocalGlance:
        state = fleet_state / f"replica-{uuid.uuid4().hex[:8]}"
        state.mkdir(parents=True)
        (state / "data").symlink_to(real_glance.data_dir, target_is_directory=True)
        # Connection: close: a stopped replica has no idle keep-alive sockets to wait out
        replica = LocalGlance(state, glance_venv, flavor="", processes=1, close_connections=True)
        started.append(replica)
        replica.start()
        return replica

    try:
        yield start
    finally:
        for replica in started:
            replica.stop()
            assert not replica.process_group(), "Glance processes were left behind"


@pytest.fixture
def make_image(real_glance: LocalGlance, tmp_path: Path) -> ImageFactory:
    """An active image of ``size`` random bytes, created directly in the origin Glance."""

    def create(size: int) -> Image:
        path = tmp_path / f"image-{uuid.uuid4().hex[:8]}.bin"
        data = os.urandom(size)
        path.write_bytes(data)
        meta = real_glance.create_image(path, name=path.stem)
        digest = hashlib.sha512(data).hexdigest()
        assert meta["os_hash_value"] == digest
        return Image(id=str(meta["id"]), size=size, sha512=digest, data=data)

    return create


def get(
    url: str, path: str, *, headers: Mapping[str, str] | None = None, timeout: float = 60.0
) -> tuple[int, bytes, bool]:
    """``GET url+path``: (status, body, whether the body arrived whole)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        response = conn.getresponse()
        try:
            body = response.read()
        except http.client.IncompleteRead as exc:
            return response.status, exc.partial, False
        return response.status, body, True
    finally:
        conn.close()
