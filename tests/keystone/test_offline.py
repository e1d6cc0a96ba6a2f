"""``[upstream] serve_cached_on_upstream_failure``, both ways, with Glance stopped.

Two daemons in front of the same Glance, with ``auth_cache_ttl = 0`` so that every
request asks Glance (and so meets the outage at once): one serves recently
authorized callers from the cache, the other (the default) answers 503.
"""

from __future__ import annotations

import hashlib
import time

import requests

from lab.polling import wait_until
from tests.keystone.conftest import DaemonFactory, World, glance_stopped

OFFLINE_AUTH_TTL = 8


def test_cached_images_are_served_only_to_recently_authorized_callers(
    world: World, start_daemon: DaemonFactory
) -> None:
    on = start_daemon(auth_cache_ttl=0, serve_cached_on_upstream_failure="true",
                      offline_auth_ttl=str(OFFLINE_AUTH_TTL))
    off = start_daemon(auth_cache_ttl=0)
    image = world.new_image("alice", visibility="private")
    not_cached = world.new_image("alice", visibility="private")
    alice, bob = world.token("alice"), world.token("bob")
    digest = hashlib.sha512(image.data).hexdigest()

    def fetch(daemon_url: str, token: str, path: str = image.path,
              **headers: str) -> requests.Response:
        return requests.get(daemon_url + path, headers={"X-Auth-Token": token, **headers},
                            timeout=30)

    for daemon in (on, off):
        assert hashlib.sha512(fetch(daemon.url, alice).content).hexdigest() == digest
        committed = daemon.data_dir / image.id
        wait_until(committed.is_file, "the commit")
    # Authorized for not_cached too, but holding no copy of it.
    assert requests.head(on.url + not_cached.path, headers={"X-Auth-Token": alice},
                         timeout=30).status_code == 200
    assert fetch(on.url, bob).status_code == 404
    alice_later = world.token("alice")  # valid, never authorized by Glance for the image
    granted = time.monotonic()
    assert fetch(on.url, alice).status_code == 200  # the freshest grant

    with glance_stopped(world):
        assert time.monotonic() - granted < OFFLINE_AUTH_TTL - 1, "Glance took long to stop"
        served = fetch(on.url, alice)
        assert served.status_code == 200
        assert hashlib.sha512(served.content).hexdigest() == digest
        part = fetch(on.url, alice, Range="bytes=10-19")
        assert part.status_code == 206
        assert part.content == image.data[10:20]

        for refused in (
            fetch(on.url, bob),  # Glance said 404 to bob
            fetch(on.url, alice_later),  # a token Glance never saw for this image
            fetch(on.url, alice, not_cached.path),  # authorized, nothing cached
            fetch(off.url, alice),  # the option is off
        ):
            assert refused.status_code == 503, refused.text[:200]
            assert image.data[:64] not in refused.content
        # Tokens are still validated: Keystone is up.
        assert fetch(on.url, "garbage").status_code == 401

        # Served until the grant is too old, then refused: poll for the turn.
        def refused_now() -> bool:
            answer = fetch(on.url, alice)
            assert answer.status_code in (200, 503), answer.text[:200]
            if answer.status_code == 200:
                assert hashlib.sha512(answer.content).hexdigest() == digest
            return answer.status_code == 503

        wait_until(refused_now, "the offline grant to expire",
                   granted + OFFLINE_AUTH_TTL + 2 - time.monotonic(), interval=0.1)
        # The grant was made after ``granted``: it cannot have expired before its ttl.
        assert time.monotonic() - granted >= OFFLINE_AUTH_TTL

    assert hashlib.sha512(fetch(on.url, alice).content).hexdigest() == digest
    assert fetch(on.url, bob).status_code == 404
    assert hashlib.sha512(fetch(off.url, alice).content).hexdigest() == digest
