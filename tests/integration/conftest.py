"""One real Glance per session, and edgecache in front of it, for the integration suite.

Upstream is a real Glance 33 on loopback (noauth, flavor ``""``: no cache of its
own), its state under ``default_state_root()/tests/<unique>``; edgecache runs as
the daemon operators start (``edgecache serve --config-file``, through
:class:`lab.edgecache.EdgecacheProcess`). The clients are the real ones Nova and
operators use (python-glanceclient, openstacksdk, the ``glance`` CLI).

Both servers are stopped by their pids when the session ends, and the Glance state
(images included) is removed. Test modules import the types below only under
``TYPE_CHECKING``, so they do not depend on how pytest names this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import glanceclient
import pytest
from glanceclient.v2.client import Client as GlanceClient

from lab.edgecache import EdgecacheProcess
from lab.glance import LocalGlance, ensure_glance_venv
from lab.procs import alive, group_pids
from lab.units import MiB
from lab.venvs import default_state_root

#: How long edgecache reuses Glance's "this caller may read this image" answer (s).
#: Short, so that a test can watch a cached image turn into Glance's 403 once it is
#: deactivated upstream.
AUTH_CACHE_TTL = 1

#: The token every client sends; noauth Glance and noauth edgecache accept any.
TOKEN = "noauth"


@dataclass(frozen=True)
class Image:
    """An active image in the upstream Glance, and the file it was created from."""

    id: str
    size: int
    os_hash_value: str
    checksum: str
    path: Path

    @property
    def file_path(self) -> str:
        return f"/v2/images/{self.id}/file"


ImageFactory = Callable[[int], Image]


@pytest.fixture(scope="session")
def real_glance() -> Iterator[LocalGlance]:
    """A real Glance (noauth, no cache of its own) for the whole session."""
    root = default_state_root()
    venv = ensure_glance_venv(root)
    unique = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    state = root / "tests" / unique
    glance = LocalGlance(state, venv, flavor="")
    masters: list[int] = []
    try:
        glance.start()
        assert glance.pid is not None
        masters.append(glance.pid)
        yield glance
    finally:
        # SIGTERM to the uWSGI master's pid (SIGKILL to its group after a grace period).
        glance.stop()
        for master in masters:
            # Whatever of that group is still alive (it must not be) dies by its pid.
            for pid in group_pids(master):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(state, ignore_errors=True)
    left = [pid for master in masters for pid in group_pids(master)]
    assert not left, f"Glance processes were left behind: {left}"


@pytest.fixture(scope="session")
def edgecache(
    real_glance: LocalGlance, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EdgecacheProcess]:
    """``edgecache serve`` in front of the session's Glance; stopped by its pid at the end."""
    daemon = EdgecacheProcess(
        tmp_path_factory.mktemp("edgecache"),
        glance_endpoints=[real_glance.url],
        max_size="4G",
        stall_time=600,
        auth_cache_ttl=AUTH_CACHE_TTL,
    )
    with daemon:
        pid = daemon.pid
        yield daemon
    assert not alive(pid), f"edgecache {pid} was left behind"


@pytest.fixture
def glance_client(edgecache: EdgecacheProcess) -> GlanceClient:
    """python-glanceclient v2 pointed at edgecache (Nova builds a fresh one per call)."""
    client: GlanceClient = glanceclient.Client("2", endpoint=edgecache.url, token=TOKEN)
    return client


@pytest.fixture
def make_image(real_glance: LocalGlance, tmp_path: Path) -> ImageFactory:
    """Create an active image of ``size`` random bytes directly in Glance."""

    def create(size: int) -> Image:
        path = tmp_path / f"image-{uuid.uuid4().hex[:8]}.bin"
        digest = hashlib.sha512()
        with path.open("wb") as fh:
            left = size
            while left:
                block = os.urandom(min(left, 4 * MiB))
                digest.update(block)
                fh.write(block)
                left -= len(block)
        meta = real_glance.create_image(path, name=path.stem)
        assert meta["os_hash_algo"] == "sha512"
        assert meta["os_hash_value"] == digest.hexdigest()
        return Image(
            id=str(meta["id"]),
            size=size,
            os_hash_value=str(meta["os_hash_value"]),
            checksum=str(meta["checksum"]),
            path=path,
        )

    return create
