"""Glance's ``download_image`` policy decides every download through edgecache.

A real Glance (with the session's real Keystone) whose policy file restricts
downloads by role and by image property, as Glance documents its "restricted
download" rule: a member may not download an image whose ``x_test_key`` is
``secret``; an admin may. Both may see the record. The admin (user A) fills the
cache; bob (user B, member) gets Glance's 403 on a join of that fill while it
runs, on a hit, on HEAD and on a range, and still downloads images without the
property. A relay between edgecache and Glance holds the fill's body midway, so
"while A's fill runs" needs no timing.

See docs/behaviour.md#authorization ("Who may download").
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator

import pytest
import requests

from lab.edgecache import EdgecacheProcess
from lab.keystone import KeystoneGlance
from lab.polling import wait_until
from lab.procs import alive
from lab.units import MiB
from tests.keystone.conftest import AUTH_CACHE_TTL, World
from tests.support.relay import Relay

RESTRICTED_DOWNLOAD = {
    "download_image": "role:admin or rule:restricted",
    "restricted": "not ('secret':%(x_test_key)s and role:member)",
}


@pytest.fixture(scope="module")
def glance(world: World) -> Iterator[KeystoneGlance]:
    restricted = KeystoneGlance(
        world.state / "glance-restricted", world.glance.venv, flavor="keystone",
        keystone=world.keystone, policy_rules=RESTRICTED_DOWNLOAD,
    )
    try:
        restricted.start()
        yield restricted
    finally:
        restricted.stop()


@pytest.fixture(scope="module")
def relay(glance: KeystoneGlance) -> Iterator[Relay]:
    with Relay(glance.url) as link:
        yield link
        link.release()


@pytest.fixture(scope="module")
def edge(world: World, relay: Relay,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgecacheProcess]:
    daemon = EdgecacheProcess(
        tmp_path_factory.mktemp("edgecache-restricted"), glance_endpoints=[relay.url],
        max_size="2G", auth_cache_ttl=AUTH_CACHE_TTL, options=world.daemon_options(),
        start_timeout=60,
    )
    daemon.start()
    yield daemon
    pid = daemon.pid if daemon.running else None
    daemon.stop()
    assert pid is None or not alive(pid)


def public_image(world: World, glance: KeystoneGlance, data: bytes, **properties: str) -> str:
    meta = glance.create_image_as(world.token("admin"), data, name="restricted",
                                  visibility="public", **properties)
    assert meta["os_hash_value"] == hashlib.sha512(data).hexdigest()
    return str(meta["id"])


def get(edge: EdgecacheProcess, path: str, token: str, *, method: str = "GET",
        **headers: str) -> requests.Response:
    # Streamed: a status is seen at once, even from a response that would then wait
    # for the held fill.
    return requests.request(method, edge.url + path, timeout=60, stream=True,
                            headers={"X-Auth-Token": token, **headers})


def assert_glances_403(answer: requests.Response, data: bytes) -> None:
    if answer.status_code != 403:
        answer.close()
        pytest.fail(f"{answer.request.method} answered {answer.status_code}, not Glance's 403")
    assert answer.headers.get("Content-Type") != "application/octet-stream"
    assert data[:64] not in answer.content
    if answer.request.method != "HEAD":
        assert "download_image" in answer.text or "authorized" in answer.text, answer.text


def test_a_member_refused_a_secret_image_is_refused_on_every_path(
    world: World, glance: KeystoneGlance, relay: Relay, edge: EdgecacheProcess
) -> None:
    data = os.urandom(8 * MiB)
    image_id = public_image(world, glance, data, x_test_key="secret")
    path = f"/v2/images/{image_id}/file"
    admin, bob = world.token("admin"), world.token("bob")
    # Glance's own verdicts, asked directly.
    assert glance.request("GET", path, headers={"X-Auth-Token": bob}).status == 403
    assert get(edge, f"/v2/images/{image_id}", bob).status_code == 200, "bob sees the record"

    relay.hold_after(MiB)
    filled: list[requests.Response] = []
    filler = threading.Thread(target=lambda: filled.append(get(edge, path, admin)))
    filler.start()
    try:
        assert relay.holding.wait(30), "A's fill reached the relay"
        # A's fill is running (held midway): bob joins it, asks HEAD, asks a range.
        assert_glances_403(get(edge, path, bob), data)
        assert_glances_403(get(edge, path, bob, method="HEAD"), data)
        assert_glances_403(get(edge, path, bob, Range="bytes=0-1023"), data)
        assert relay.holding.is_set(), "all while A's fill was still running"
    finally:
        relay.release()
        filler.join(60)
    assert filled and filled[0].status_code == 200
    assert hashlib.sha512(filled[0].content).hexdigest() == hashlib.sha512(data).hexdigest()
    wait_until(lambda: (edge.data_dir / image_id).is_file(), "A's fill to be committed")

    # A hit: GET, HEAD, a range.
    assert_glances_403(get(edge, path, bob), data)
    assert_glances_403(get(edge, path, bob, method="HEAD"), data)
    assert_glances_403(get(edge, path, bob, Range="bytes=10-20"), data)
    again = get(edge, path, admin)
    assert again.status_code == 200 and again.content == data
    assert len(relay.file_requests(path)) == 1, "one data GET"
    assert relay.probes(path), "the rest were download checks"
    probes = [r for r in glance.request_log() if r.path == path and r.is_download_probe]
    assert {r.status for r in probes} >= {403}, "bob's checks, as Glance logged them"


def test_the_restriction_is_by_property_a_member_downloads_other_images(
    world: World, glance: KeystoneGlance, edge: EdgecacheProcess
) -> None:
    data = os.urandom(256 * 1024)
    image_id = public_image(world, glance, data, x_test_key="open")
    path = f"/v2/images/{image_id}/file"
    admin, bob = world.token("admin"), world.token("bob")
    assert get(edge, path, admin).content == data  # fills the cache
    wait_until(lambda: (edge.data_dir / image_id).is_file(), "the fill to be committed")
    for method in ("GET", "HEAD"):
        answer = get(edge, path, bob, method=method)
        assert answer.status_code == 200, answer.text[:300]
    assert get(edge, path, bob).content == data
    assert get(edge, path, bob, Range="bytes=5-9").content == data[5:10]
