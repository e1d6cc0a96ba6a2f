"""The slow stores for direct reads (``[upstream] direct_stores``, docs/behaviour.md).

:func:`s3_server` is moto's S3 server and :func:`local_swift` a real single-node
Swift with tempauth; the in-process backends run the store contract in
tests/contract. :func:`locations_glance` is a real Glance with
``show_multiple_locations`` on, so its records carry ``locations`` naming its
file store."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator

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
