"""A hung Glance endpoint in front of a real one: every download still succeeds, in time.

docs/behaviour.md#upstream-faults: an endpoint that takes the connection and then
never answers, or stops sending mid-body, is given up after ``[upstream]
read_timeout``, rested, and the request (or the fill's resume) goes to the next
endpoint. The one timing bound asserted is that each download ends within
``read_timeout`` and a second. The second endpoint is always the
session's real Glance; the first is a :class:`~tests.support.hung.HungListener`
or a :class:`~tests.support.relay.Relay` in front of that same Glance.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from lab.edgecache import EdgecacheProcess, metric_value
from lab.glance import LocalGlance
from lab.httpclient import Response, request
from lab.polling import wait_until
from lab.units import MiB
from tests.fleet.conftest import Image, ImageFactory
from tests.support.hung import HungListener
from tests.support.relay import Relay

#: Small, so a test waits for it a few times; the default is minutes.
READ_TIMEOUT = 2.0
#: The bound on a download while an endpoint hangs: the timeout and a second.
BOUND = READ_TIMEOUT + 1.0
SIZE = 12 * MiB + 4321
#: Where a stalling endpoint stops sending an image body.
STALL_AT = 5 * MiB + 17


def _timeouts() -> dict[str, dict[str, str | None]]:
    return {"upstream": {"read_timeout": str(READ_TIMEOUT), "connect_timeout": str(READ_TIMEOUT)}}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def timed(edge: EdgecacheProcess, method: str, path: str) -> tuple[Response, float]:
    """``method path`` to edgecache on a fresh connection, and how long it took (s)."""
    started = time.monotonic()
    answer = request(edge.port, method, path, timeout=30)
    return answer, time.monotonic() - started


def assert_the_image(answer: Response, image: Image) -> None:
    assert answer.status == 200, answer.body[:300]
    assert int(answer.headers["content-length"]) == image.size
    assert sha256(answer.body) == sha256(image.data)


def check_metadata(answer: Response, image: Image) -> None:
    assert answer.status == 200, answer.body[:300]
    record = json.loads(answer.body)
    assert record["id"] == image.id
    assert record["os_hash_value"] == image.sha512


def check_listing(answer: Response, image: Image) -> None:
    assert answer.status == 200, answer.body[:300]
    assert image.id in {entry["id"] for entry in json.loads(answer.body)["images"]}


def check_head(answer: Response, image: Image) -> None:
    assert (answer.status, answer.body) == (200, b"")
    assert int(answer.headers["content-length"]) == image.size
    assert answer.headers["content-md5"] == hashlib.md5(image.data).hexdigest()


class Download(NamedTuple):
    """One kind of download: how it is asked for one image and how its answer is checked."""

    method: str
    path: Callable[[Image], str]
    check: Callable[[Response, Image], None]
    #: the image is cached before it is asked for (a hit)
    cached: bool = False


DOWNLOADS = {
    "metadata": Download("GET", lambda image: f"/v2/images/{image.id}", check_metadata),
    "miss": Download("GET", lambda image: image.file_path, assert_the_image),
    "hit": Download("GET", lambda image: image.file_path, assert_the_image, cached=True),
    "listing": Download("GET", lambda image: "/v2/images?limit=1000", check_listing),
    "head": Download("HEAD", lambda image: image.file_path, check_head),
}


@pytest.fixture
def hung() -> Iterator[HungListener]:
    with HungListener() as listener:
        yield listener


@pytest.mark.parametrize("kind", list(DOWNLOADS))
def test_an_endpoint_that_never_answers_is_given_up_and_the_next_glance_serves(
    real_glance: LocalGlance, make_image: ImageFactory, hung: HungListener, tmp_path: Path,
    kind: str,
) -> None:
    """Endpoint 1 accepts and never answers; endpoint 2 is a real Glance. Every kind of
    download is answered whole and verified within read_timeout and a second, and
    endpoint 1 was asked first (a fresh daemon has rested nothing yet)."""
    method, path_for, check, cached = DOWNLOADS[kind]
    image = make_image(SIZE)
    with EdgecacheProcess(
        tmp_path, glance_endpoints=[hung.url, real_glance.url], auth_cache_ttl=0,
        options=_timeouts(),
    ) as edge:
        if cached:
            warm, _ = timed(edge, "GET", image.file_path)
            assert_the_image(warm, image)
            wait_until(lambda: (edge.data_dir / image.id).exists(), "the image to be committed")
            edge.restart()  # rests are the daemon's memory: endpoint 1 is first again
        asked = hung.accepted

        answer, elapsed = timed(edge, method, path_for(image))

        check(answer, image)
        assert elapsed < BOUND, f"{kind} took {elapsed:.2f} s with a hung endpoint"
        assert hung.accepted > asked, "the hung endpoint was not asked first"
        if cached:
            assert real_glance.count_requests("GET", image.file_path, at_least=1) == 1


def test_an_endpoint_that_never_answers_image_data_is_given_up_for_the_next_glance(
    real_glance: LocalGlance, make_image: ImageFactory, tmp_path: Path
) -> None:
    """Endpoint 1 answers metadata but never the image-data GET (no status line, the
    connection held open); the fill asks endpoint 2 and the caller gets the verified
    image within read_timeout and a second."""
    image = make_image(SIZE)
    with Relay(real_glance.url) as relay, EdgecacheProcess(
        tmp_path, glance_endpoints=[relay.url, real_glance.url], auth_cache_ttl=0,
        options=_timeouts(),
    ) as edge:
        relay.hang_files(True)
        answer, elapsed = timed(edge, "GET", image.file_path)

        assert_the_image(answer, image)
        assert elapsed < BOUND, f"the download took {elapsed:.2f} s"
        wait_until(lambda: len(relay.file_requests(image.file_path)) == 1,
                   "the relay to record the GET it never answered")
        assert [r.status for r in relay.file_requests(image.file_path)] == [0]
        # the metadata came through endpoint 1, the bytes straight from endpoint 2
        assert real_glance.count_requests("GET", image.file_path, at_least=1) == 1
        wait_until(lambda: (edge.data_dir / image.id).exists(), "the image to be committed")


@pytest.mark.parametrize("spelling", ["127.0.0.1", "LOCALHOST"])
def test_a_body_that_stalls_is_resumed_from_the_next_glance_and_its_sender_rested(
    real_glance: LocalGlance, make_image: ImageFactory, tmp_path: Path, spelling: str
) -> None:
    """Endpoint 1 relays the real Glance but stops sending every image body after
    STALL_AT bytes, the connection left open; endpoint 2 is that Glance directly.
    The fill resumes from endpoint 2 (endpoint 1, rested, is not asked again), the
    caller gets the whole verified image within read_timeout and a second, and a
    second image downloads whole too. ``spelling`` is how the operator wrote endpoint
    1's host: the endpoint rested is the one that stalled however it is written."""
    image, other = make_image(SIZE), make_image(SIZE + 1)
    with Relay(real_glance.url) as relay:
        first = f"http://{spelling}:{relay.port}"
        with EdgecacheProcess(
            tmp_path, glance_endpoints=[first, real_glance.url], auth_cache_ttl=0,
            options=_timeouts(),
        ) as edge:
            relay.stall_bodies(STALL_AT)
            answer, elapsed = timed(edge, "GET", image.file_path)

            assert_the_image(answer, image)
            assert elapsed < BOUND, f"the download took {elapsed:.2f} s"
            wait_until(lambda: len(relay.file_requests(image.file_path)) >= 1,
                       "the relay to record the GET it stalled")
            stalled = relay.file_requests(image.file_path)
            assert [(r.range, r.stalled, r.body_bytes) for r in stalled] == [
                (None, True, STALL_AT)
            ], "the resume went back to the endpoint that had stalled"
            # Glance saw the relayed GET and the resume, a Range asked of it directly
            assert real_glance.count_requests("GET", image.file_path, at_least=2) == 2
            assert metric_value(edge.url, "edgecache_upstream_errors_total",
                                reason="body") == 1
            wait_until(lambda: (edge.data_dir / image.id).exists(), "the image to be committed")

            again, elapsed = timed(edge, "GET", other.file_path)
            assert_the_image(again, other)
            assert elapsed < BOUND, f"the next download took {elapsed:.2f} s"
