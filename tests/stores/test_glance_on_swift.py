"""A real Glance storing its images in a real Swift, and edgecache reading them there.

glance_store's swift driver (single tenant) writes the object and records a
``swift+http://USER:KEY@AUTH_ADDRESS/glance/IMAGE_ID`` location; with
``[upstream] direct_stores`` the daemon takes the verdict from Glance and the bytes
from Swift, so Glance never serves the image's ``/file``.

glance_store 5.7 authenticates to Swift with Keystone v3 only, and LocalSwift has
tempauth. :class:`AuthShim` bridges the two at one address ending in ``/auth/v1.0``:
a Keystone v3 password request (``POST .../auth/tokens``, from Glance) becomes a
tempauth handshake whose token and storage URL come back as a v3 token and its
``object-store`` catalog entry, and a v1 handshake (``GET /auth/v1.0``, from
edgecache, which reads that address as a tempauth one) is relayed unchanged. Object
reads and writes go straight to the Swift proxy with the tempauth token.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lab.edgecache import EdgecacheProcess, metric_value
from lab.glance import LocalGlance, ensure_glance_venv
from lab.polling import wait_until
from lab.swift import KEY, USER, LocalSwift
from lab.units import MiB
from lab.venvs import default_state_root
from tests.fleet.conftest import get
from tests.functional import file_path


class AuthShim(ThreadingHTTPServer):
    """Keystone v3 password auth and tempauth v1 in front of a LocalSwift's tempauth."""

    daemon_threads = True

    def __init__(self, swift: LocalSwift) -> None:
        super().__init__(("127.0.0.1", 0), _ShimHandler)
        self.swift = swift
        self.v3_logins = 0

    @property
    def auth_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/auth/v1.0"

    def tempauth(self, user: str, key: str) -> tuple[int, dict[str, str]]:
        try:
            status, headers, _ = self.swift.request(
                "GET", self.swift.auth_url, headers={"X-Auth-User": user, "X-Auth-Key": key}
            )
        except OSError:  # Swift is stopped
            return 503, {}
        return status, headers


class _ShimHandler(BaseHTTPRequestHandler):
    server: AuthShim

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/auth/v1.0":
            self._reply(404, {})
            return
        status, headers = self.server.tempauth(
            self.headers.get("X-Auth-User", ""), self.headers.get("X-Auth-Key", "")
        )
        self._reply(status, {k: v for k, v in headers.items()
                             if k.lower() in ("x-storage-url", "x-auth-token")})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if not self.path.endswith("/auth/tokens"):
            self._reply(404, {})
            return
        auth = json.loads(body)["auth"]
        user = auth["identity"]["password"]["user"]
        project = auth["scope"]["project"]["name"]
        status, headers = self.server.tempauth(f"{project}:{user['name']}", user["password"])
        if status // 100 != 2:
            code = 401 if status == 401 else 503
            self._reply(code, {"Content-Type": "application/json"},
                        json.dumps({"error": {"code": code}}).encode())
            return
        self.server.v3_logins += 1
        domain = {"id": "default", "name": "Default"}
        token = {
            "methods": ["password"],
            "issued_at": "2000-01-01T00:00:00.000000Z",
            "expires_at": "2999-01-01T00:00:00.000000Z",
            "user": {"id": user["name"], "name": user["name"], "domain": domain},
            "project": {"id": project, "name": project, "domain": domain},
            "roles": [{"id": "member", "name": "member"}],
            "catalog": [{
                "id": "swift", "name": "swift", "type": "object-store",
                "endpoints": [
                    {"id": f"swift-{interface}", "interface": interface,
                     "region": "RegionOne", "region_id": "RegionOne",
                     "url": headers["x-storage-url"]}
                    for interface in ("public", "internal", "admin")
                ],
            }],
        }
        self._reply(201, {"Content-Type": "application/json",
                          "X-Subject-Token": headers["x-auth-token"]},
                    json.dumps({"token": token}).encode())


@pytest.fixture(scope="module")
def auth_shim(local_swift: LocalSwift) -> Iterator[AuthShim]:
    shim = AuthShim(local_swift)
    thread = threading.Thread(target=shim.serve_forever, daemon=True)
    thread.start()
    try:
        yield shim
    finally:
        shim.shutdown()
        shim.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def swift_glance(auth_shim: AuthShim) -> Iterator[LocalGlance]:
    """A Glance whose default store is ``local_swift`` and whose records list locations."""
    venv = ensure_glance_venv(default_state_root())
    unique = f"glance-swift-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    state = default_state_root() / "tests" / unique
    glance = LocalGlance(
        state, venv, show_multiple_locations=True,
        swift_auth_address=auth_shim.auth_url, swift_user=USER, swift_key=KEY,
    )
    try:
        with glance:
            yield glance
        assert not glance.process_group(), "Glance processes were left behind"
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_an_image_glance_stored_in_swift_is_read_from_swift(
    swift_glance: LocalGlance, local_swift: LocalSwift, auth_shim: AuthShim, tmp_path: Path
) -> None:
    glance = swift_glance
    data = os.urandom(4 * MiB + 17)
    image = glance.create_image(data, name="on-swift")
    image_id = str(image["id"])
    locations = image["locations"]
    assert isinstance(locations, list) and len(locations) == 1
    url = locations[0]["url"]
    assert url.startswith("swift+http://")
    assert url.endswith(f"@{auth_shim.auth_url.split('://')[1]}/glance/{image_id}")
    assert auth_shim.v3_logins >= 1  # Glance wrote it with a (shimmed) Keystone token
    # the object really is in Swift, not in Glance's file store
    token, storage = local_swift.authenticate()
    status, _, stored = local_swift.request("GET", f"{storage}/glance/{image_id}", token)
    assert (status, stored) == (200, data)
    assert not (glance.data_dir / "images" / image_id).exists()

    with EdgecacheProcess(
        tmp_path, glance_endpoints=[glance.url], auth_cache_ttl=1,
        options={"upstream": {
            "direct_stores": "true",
            "direct_store_allow": f"{auth_shim.auth_url},{local_swift.url}/",
        }},
    ) as edge:
        status, body, whole = get(edge.url, file_path(image_id))
        assert (status, whole) == (200, True)
        assert hashlib.sha512(body).hexdigest() == image["os_hash_value"]
        wait_until(lambda: (edge.data_dir / image_id).is_file(), "the commit")
        assert glance.count_requests("GET", f"/v2/images/{image_id}", at_least=1) >= 1
        assert glance.count_requests("GET", file_path(image_id), at_least=1, timeout=1) == 0
        assert metric_value(edge.url, "edgecache_upstream_errors_total", reason="store") == 0

        # Swift goes away: the cached image is still served; an uncached one can be read
        # neither from the store nor from Glance (whose store it is), and once Swift is
        # back it is filled from Swift again.
        other_data = os.urandom(MiB + 5)
        other = glance.create_image(other_data, name="on-swift-2")
        other_id = str(other["id"])
        local_swift.stop()
        try:
            status, body, whole = get(edge.url, file_path(image_id))
            assert (status, whole, body) == (200, True, data)
            status, body, whole = get(edge.url, file_path(other_id))
            assert status == 503
            assert metric_value(edge.url, "edgecache_upstream_errors_total", reason="store") >= 1
            assert glance.count_requests("GET", file_path(other_id), at_least=1) >= 1
            fallbacks = [r.status for r in glance.request_log()
                         if r.method == "GET" and r.path == file_path(other_id)]
            assert set(fallbacks) == {500}, fallbacks
        finally:
            local_swift.start()  # same ports and data: the rest of the session needs it
        status, body, whole = get(edge.url, file_path(other_id))
        assert (status, whole, body) == (200, True, other_data)
        assert glance.count_requests("GET", file_path(other_id)) == len(fallbacks)
        assert glance.count_requests("GET", file_path(image_id)) == 0
