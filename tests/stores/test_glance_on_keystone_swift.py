"""A real Glance storing images in a Keystone-authenticated Swift, read by edgecache there.

No stand-ins between the pieces: the Keystone and the keystone-mode Swift of
test_swift_keystone.py (:func:`keystone_swift`), and a Glance whose swift store
authenticates as ``glance-store:glance`` at Keystone's ``/v3`` address and finds
the proxy through the ``object-store`` entry of its token's catalog. The
location Glance records names that Keystone address, so edgecache (with
``[upstream] direct_stores``) reads the object with its own ``[upstream_auth]``
session for the same user, and Glance never serves the image's ``/file``.

edgecache runs in keystone mode: :func:`edgecache.daemon.config.load` only builds the
``[upstream_auth]`` session when ``auth_strategy = keystone``, and without that
session a location at a Keystone address cannot be read. Glance runs noauth, so
the caller's token edgecache forwards to it is simply ignored there.
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

from lab.edgecache import EdgecacheProcess, metric_value
from lab.glance import LocalGlance, ensure_glance_venv
from lab.polling import wait_until
from lab.units import MiB
from lab.venvs import default_state_root
from tests.fleet.conftest import get
from tests.functional import file_path
from tests.stores import test_swift_keystone as ks_module
from tests.stores.test_swift_keystone import (
    CONTAINER,
    STORE_PASSWORD,
    STORE_PROJECT,
    STORE_USER,
    KeystoneSwift,
)

# the Keystone + keystone-mode Swift pair, as its own module-scoped fixture here
keystone_swift = ks_module.keystone_swift


@pytest.fixture(scope="module")
def keystone_glance(keystone_swift: KeystoneSwift) -> Iterator[LocalGlance]:
    """A Glance whose default store is the keystone-mode Swift, listing locations."""
    venv = ensure_glance_venv(default_state_root())
    unique = f"glance-kss-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    state = default_state_root() / "tests" / unique
    glance = LocalGlance(
        state, venv, show_multiple_locations=True,
        swift_auth_address=keystone_swift.keystone.auth_url,
        swift_user=f"{STORE_PROJECT}:{STORE_USER}", swift_key=STORE_PASSWORD,
    )
    try:
        with glance:
            yield glance
        assert not glance.process_group(), "Glance processes were left behind"
    finally:
        shutil.rmtree(state, ignore_errors=True)


def _edge_options(ks: KeystoneSwift) -> dict[str, dict[str, str]]:
    keystone = ks.keystone
    return {
        "DEFAULT": {"auth_strategy": "keystone"},
        "keystone_authtoken": keystone.authtoken_options(),
        "upstream_auth": keystone.credentials(STORE_USER, STORE_PASSWORD, STORE_PROJECT),
        "upstream": {"direct_stores": "true", "direct_store_allow": ks.swift.url + "/"},
    }


def test_an_image_glance_stored_in_keystone_swift_is_read_from_swift(
    keystone_glance: LocalGlance, keystone_swift: KeystoneSwift, tmp_path: Path
) -> None:
    glance, ks = keystone_glance, keystone_swift
    data = os.urandom(4 * MiB + 17)
    image = glance.create_image(data, name="on-keystone-swift")
    image_id = str(image["id"])
    locations = image["locations"]
    assert isinstance(locations, list) and len(locations) == 1
    url = locations[0]["url"]
    assert url.startswith("swift+http://")
    keystone_address = ks.keystone.auth_url.split("://", 1)[1]
    assert url.endswith(f"@{keystone_address}/{CONTAINER}/{image_id}"), url
    # Glance wrote it into the store project's account with a Keystone token
    status, _, stored = ks.swift.request(
        "GET", f"{ks.account}/{CONTAINER}/{image_id}", ks.token())
    assert (status, stored) == (200, data)
    assert not (glance.data_dir / "images" / image_id).exists()

    with EdgecacheProcess(
        tmp_path, glance_endpoints=[glance.url], auth_cache_ttl=1, options=_edge_options(ks),
    ) as edge:
        status, body, whole = get(edge.url, file_path(image_id),
                                  headers={"X-Auth-Token": ks.token()})
        assert (status, whole) == (200, True), body[:500]
        assert hashlib.sha512(body).hexdigest() == image["os_hash_value"]
        wait_until(lambda: (edge.data_dir / image_id).is_file(), "the commit")
        assert glance.count_requests("GET", f"/v2/images/{image_id}", at_least=1) >= 1
        assert glance.count_requests("GET", file_path(image_id), at_least=1, timeout=1) == 0
        assert metric_value(edge.url, "edgecache_upstream_errors_total", reason="store") == 0
