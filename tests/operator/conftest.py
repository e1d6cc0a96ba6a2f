"""Operator features against the real thing: a real Glance, edgecache as a process, real CLIs.

Upstream is one real Glance 33 per session (noauth, no cache of its own), run by
:class:`lab.glance.LocalGlance` like the integration suite's; each test
module starts the edgecache daemon(s) it needs with the options it tests
(:func:`tests.operator.support.operator_daemon`). The clients are the ones
operators use: the ``glance`` CLI of python-glanceclient, ``glance-cache-manage``
from the Glance package, and ``edgecache cache``. Every process is stopped by
its pid at the end.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.glance import LocalGlance, ensure_glance_venv
from lab.venvs import default_state_root
from tests.operator.support import Image, ImageFactory


@pytest.fixture(scope="session")
def glance_venv() -> Path:
    return ensure_glance_venv(default_state_root())


@pytest.fixture(scope="session")
def real_glance(glance_venv: Path) -> Iterator[LocalGlance]:
    """A real Glance for the session (its state is removed at the end)."""
    unique = f"operator-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    state = default_state_root() / "tests" / unique
    glance = LocalGlance(state, glance_venv, flavor="")
    try:
        with glance:
            yield glance
        assert not glance.process_group(), "Glance processes were left behind"
    finally:
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="session")
def make_image(real_glance: LocalGlance, image_dir: Path) -> ImageFactory:
    """An active image of ``size`` random bytes, created directly in Glance."""

    def create(size: int) -> Image:
        path = image_dir / f"image-{uuid.uuid4().hex[:8]}.bin"
        data = os.urandom(size)
        path.write_bytes(data)
        meta = real_glance.create_image(path, name=path.stem)
        digest = hashlib.sha512(data).hexdigest()
        assert meta["os_hash_value"] == digest
        return Image(id=str(meta["id"]), size=size, sha512=digest, path=path)

    return create
