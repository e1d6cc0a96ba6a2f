"""Keystone tokens and Glance's own authorization, on misses and hits alike.

One edgecache daemon in keystone mode (``auth_cache_ttl`` = 2 s) in front of a
real Glance that validates tokens against a real Keystone. Every download is
checked byte for byte against Glance's sha512.

See docs/behaviour.md#authorization.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import pytest
import requests

from lab.edgecache import EdgecacheProcess
from lab.glance import RequestRecord
from lab.polling import wait_until
from tests.keystone.conftest import AUTH_CACHE_TTL, DaemonFactory, Image, World

#: every token a test sent, to prove none of them reached the daemon's log
SENT_TOKENS: list[str] = []


@pytest.fixture(scope="module")
def edge(start_daemon: DaemonFactory) -> Iterator[EdgecacheProcess]:
    daemon = start_daemon()
    yield daemon
    log = daemon.log_text()
    leaked = [token[:12] + "..." for token in SENT_TOKENS if token in log]
    assert not leaked, f"tokens in the daemon's log: {leaked}"


def get(edge: EdgecacheProcess, path: str, token: str | None, *, method: str = "GET",
        **headers: str) -> requests.Response:
    if token is not None:
        SENT_TOKENS.append(token)
        headers["X-Auth-Token"] = token
    if "X-Service-Token" in headers:
        SENT_TOKENS.append(headers["X-Service-Token"])
    return requests.request(method, edge.url + path, headers=headers, timeout=60)


def download_ok(edge: EdgecacheProcess, image: Image, token: str, **headers: str) -> None:
    response = get(edge, image.path, token, **headers)
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert hashlib.sha512(response.content).hexdigest() == image.sha512


def cached(edge: EdgecacheProcess, image: Image) -> bool:
    return (edge.data_dir / image.id).is_file()


def answer_turns(edge: EdgecacheProcess, image: Image, token: str, old: int, new: int,
                 within: float) -> requests.Response:
    """Ask for the image until the answer turns from ``old`` to ``new``; the first ``new``.

    Any other status fails at once, and so does a turn that takes over ``within`` s.
    """
    answers: list[requests.Response] = []

    def turned() -> bool:
        answer = get(edge, image.path, token)
        assert answer.status_code in (old, new), (answer.status_code, answer.text[:300])
        if answer.status_code == 200:
            assert hashlib.sha512(answer.content).hexdigest() == image.sha512
        answers.append(answer)
        return answer.status_code == new

    wait_until(turned, f"{image.path} to answer {new} instead of {old}", within, interval=0.1)
    return answers[-1]


def finished_after(world: World, image: Image, method: str, path: str,
                   status: int, after: Callable[[RequestRecord], bool]) -> bool:
    """Whether Glance finished ``method path`` with ``status`` after the first request
    of the image that ``after`` picks (uWSGI logs each request when it is done)."""
    records = [r for r in world.glance.request_log() if image.id in r.path]
    first = next((i for i, record in enumerate(records) if after(record)), None)
    return first is not None and any(
        r.method == method and r.path == path and r.status == status for r in records[first:]
    )


def purge_lines(edge: EdgecacheProcess, image: Image) -> list[str]:
    return [line for line in edge.log_text().splitlines()
            if image.id in line and "purging" in line]


def test_private_image_is_404_to_another_project_even_when_cached(
    world: World, edge: EdgecacheProcess
) -> None:
    image = world.new_image("alice", visibility="private")
    download_ok(edge, image, world.token("alice"))
    wait_until(lambda: cached(edge, image), "alice's download to be committed")
    download_ok(edge, image, world.token("alice"))  # a hit

    bob = world.token("bob")
    for method in ("GET", "HEAD"):
        answer = get(edge, image.path, bob, method=method)
        assert answer.status_code == 404, answer.text[:300]
        assert not answer.content or image.data[:64] not in answer.content
    assert get(edge, f"/v2/images/{image.id}", bob).status_code == 404  # passthrough too
    assert get(edge, image.path, bob, Range="bytes=0-9").status_code == 404

    # A stranger's 404s never purge the owner's copy (edgecache checks as itself): its
    # own check is a metadata GET that Glance answers 200 after bob's first 404.
    meta_path = f"/v2/images/{image.id}"
    wait_until(
        lambda: finished_after(world, image, "GET", meta_path, 200,
                               lambda r: r.path == meta_path and r.status == 404),
        "edgecache's own deletion check of the image", 10,
    )
    assert purge_lines(edge, image) == []
    assert cached(edge, image)
    download_ok(edge, image, world.token("alice"))
    assert world.glance.count_requests("GET", image.path) == 1  # a hit: the copy stayed


def test_missing_garbage_and_expired_tokens_are_401(world: World, edge: EdgecacheProcess) -> None:
    image = world.new_image("alice", visibility="private")
    alice = world.token("alice")
    download_ok(edge, image, alice)
    wait_until(lambda: cached(edge, image), "the image to be committed")
    expired = world.expired_token("alice")

    for token in (None, "garbage", "gAAAAAB" + "x" * 180, expired):
        for path in (image.path, f"/v2/images/{image.id}", "/v2/images"):
            answer = get(edge, path, token)
            assert answer.status_code == 401, (token and token[:10], path, answer.text[:200])
            assert answer.headers["WWW-Authenticate"] == (
                f'Keystone uri="{world.keystone.auth_url}"'
            )
            assert answer.headers.get("x-openstack-request-id", "").startswith("req-")
            assert image.data[:64] not in answer.content
    # The token of a moment ago still works: the rejections did not poison anything.
    download_ok(edge, image, alice)
    # No token needed where Glance needs none.
    assert get(edge, "/versions", None).status_code == 200
    assert get(edge, "/healthcheck", None).status_code == 200


def test_service_token_is_honoured_and_forwarded(world: World, edge: EdgecacheProcess) -> None:
    """Nova's long operations: an expired user token plus a valid service token."""
    image = world.new_image("alice", visibility="private")
    download_ok(edge, image, world.token("alice"))
    expired = world.expired_token("alice")
    service = world.token("admin")  # holds the 'service' role

    download_ok(edge, image, expired, **{"X-Service-Token": service})  # a hit
    assert get(edge, image.path, expired, **{"X-Service-Token": "garbage"}).status_code == 401
    # A valid user token with a bad service token is refused too (auth_token's rule).
    assert get(edge, image.path, world.token("alice"),
               **{"X-Service-Token": "garbage"}).status_code == 401
    # ...and Glance sees the service token too: its answer for the metadata matches.
    answer = get(edge, f"/v2/images/{image.id}", expired, **{"X-Service-Token": service})
    assert answer.status_code == 200
    assert answer.json()["id"] == image.id


def test_a_member_of_a_shared_image_can_download_it(world: World, edge: EdgecacheProcess) -> None:
    image = world.new_image("alice", visibility="shared")
    world.glance.share_image(image.id, world.token("alice"), world.project_of("bob"),
                             world.token("bob"))
    download_ok(edge, image, world.token("bob"))  # bob's download fills the cache
    wait_until(lambda: cached(edge, image), "the image to be committed")
    download_ok(edge, image, world.token("alice"))
    download_ok(edge, image, world.token("bob"))
    assert get(edge, image.path, world.token("carol")).status_code == 404


def test_deactivated_image_is_403_to_a_member_and_served_to_an_admin(
    world: World, edge: EdgecacheProcess
) -> None:
    image = world.new_image("alice", visibility="shared")
    world.glance.share_image(image.id, world.token("alice"), world.project_of("bob"),
                             world.token("bob"))
    bob = world.token("bob")
    download_ok(edge, image, bob)
    wait_until(lambda: cached(edge, image), "the image to be committed")

    world.glance.deactivate_image(image.id)
    # bob's earlier 'yes' may be reused until it expires, never longer.
    refused = answer_turns(edge, image, bob, 200, 403, AUTH_CACHE_TTL + 1)
    assert image.data[:64] not in refused.content
    assert get(edge, image.path, world.token("alice")).status_code == 403  # owner, not admin
    download_ok(edge, image, world.token("admin"))  # Glance serves admins

    world.glance.reactivate_image(image.id)
    download_ok(edge, image, bob)  # at once: refusals are never reused


def test_image_deleted_in_glance_is_404_within_the_ttl_and_purged(
    world: World, edge: EdgecacheProcess
) -> None:
    image = world.new_image("alice", visibility="private")
    alice = world.token("alice")
    download_ok(edge, image, alice)
    wait_until(lambda: cached(edge, image), "the image to be committed")
    download_ok(edge, image, alice)  # Glance's 'yes' is now reused for AUTH_CACHE_TTL

    deleted = world.glance.request("DELETE", f"/v2/images/{image.id}",
                                   headers={"X-Auth-Token": alice})
    assert deleted.status == 204  # straight to Glance: edgecache never saw the DELETE
    answer_turns(edge, image, alice, 200, 404, AUTH_CACHE_TTL + 1)
    wait_until(lambda: not cached(edge, image), "the copy of the deleted image to be purged",
             timeout=10)
    assert "deleted upstream" in edge.log_text()


def test_a_changed_image_is_never_served_from_the_old_copy(
    world: World, edge: EdgecacheProcess
) -> None:
    """A property edit changes ``updated_at``, never an active image's bytes: the hash
    decides and the committed copy stays a hit. (Glance cannot change an active
    image's bytes; tests/functional/test_revalidation.py changes them in FaultyGlance.)"""
    image = world.new_image("alice", visibility="private")
    alice = world.token("alice")
    download_ok(edge, image, alice)
    wait_until(lambda: cached(edge, image), "the image to be committed")
    inode = (edge.data_dir / image.id).stat().st_ino
    patched = world.glance.request(
        "PATCH", f"/v2/images/{image.id}",
        b'[{"op": "add", "path": "/edgecache_test", "value": "1"}]',
        {"X-Auth-Token": alice, "Content-Type": "application/openstack-images-v2.1-json-patch"},
    )
    assert patched.status == 200, patched.body[:300]
    meta_path = f"/v2/images/{image.id}"

    def asked_again() -> bool:
        download_ok(edge, image, alice)
        return finished_after(world, image, "GET", meta_path, 200,
                              lambda r: r.method == "PATCH")

    # Once the reused answer expires, edgecache sees the new updated_at from Glance.
    wait_until(asked_again, "edgecache to ask Glance about the changed image",
               AUTH_CACHE_TTL + 2, interval=0.1)
    download_ok(edge, image, alice)
    assert (edge.data_dir / image.id).stat().st_ino == inode  # the same committed file
    assert world.glance.count_requests("GET", image.path) == 1  # never fetched again
