"""The cache API in keystone mode: admin-only by validated role; prefetch with [upstream_auth].

A queued image is fetched with edgecache's own service credentials (the queue
outlives every caller's token), yet each download is still Glance's decision
for the caller who asks.
"""

from __future__ import annotations

import hashlib
import json

from lab.polling import wait_until
from tests.keystone.conftest import DaemonFactory, World
from tests.operator.support import glance_cli, request


def _cached(url: str, token: str) -> set[str]:
    status, _, body = request(url, "GET", "/v2/cache", headers={"X-Auth-Token": token})
    assert status == 200, body
    return {entry["image_id"] for entry in json.loads(body)["cached_images"]}


def test_cache_api_needs_an_admin_token(start_daemon: DaemonFactory, world: World) -> None:
    edge = start_daemon()
    alice = world.token("alice")
    assert request(edge.url, "GET", "/v2/cache")[0] == 401
    assert request(edge.url, "GET", "/v2/cache", headers={"X-Auth-Token": alice})[0] == 403
    # A role claimed in a header is not a role held.
    forged = {"X-Auth-Token": alice, "X-Roles": "admin", "X-Identity-Status": "Confirmed"}
    assert request(edge.url, "GET", "/v2/cache", headers=forged)[0] == 403
    assert request(edge.url, "DELETE", "/v2/cache", headers=forged)[0] == 403
    assert request(edge.url, "GET", "/v2/cached_images", headers=forged)[0] == 403
    assert request(edge.url, "GET", "/v2/cache",
                   headers={"X-Auth-Token": world.token("admin")})[0] == 200


def test_prefetch_uses_service_credentials(start_daemon: DaemonFactory, world: World) -> None:
    edge = start_daemon()
    image = world.new_image("alice", size=2 << 20)
    admin = world.token("admin")
    # The admin queues alice's private image with the glance CLI; the prefetch
    # itself runs later, with [upstream_auth]'s token.
    result = glance_cli(edge.url, "cache-queue", image.id, token=admin)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    wait_until(lambda: image.id in _cached(edge.url, admin), "the prefetch", timeout=60)
    assert world.glance.count_requests("GET", image.path) == 1

    # Still Glance's decision per caller: alice gets her bytes from the cache, bob a 404.
    status, _, body = request(edge.url, "GET", image.path,
                              headers={"X-Auth-Token": world.token("alice")})
    assert status == 200
    assert hashlib.sha512(body).hexdigest() == image.sha512
    status, _, _ = request(edge.url, "GET", image.path,
                           headers={"X-Auth-Token": world.token("bob")})
    assert status == 404
    assert world.glance.count_requests("GET", image.path) == 1
