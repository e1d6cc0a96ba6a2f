"""``[upstream] http_proxy``: image-data downloads go through a proxy, nothing else does."""

from __future__ import annotations

import concurrent.futures
import hashlib
from pathlib import Path

from lab.edgecache import EdgecacheProcess
from lab.glance import LocalGlance
from lab.polling import wait_until
from lab.ports import free_port
from lab.units import MiB
from tests.fleet.conftest import ImageFactory, get
from tests.support.relay import Relay


def test_image_downloads_and_their_resumes_go_through_the_proxy(
    real_glance: LocalGlance, make_image: ImageFactory, tmp_path: Path
) -> None:
    image = make_image(12 * MiB + 3)
    with Relay() as proxy, EdgecacheProcess(
        tmp_path, glance_endpoints=[real_glance.url], auth_cache_ttl=1,
        options={"upstream": {"http_proxy": proxy.url}},
    ) as edge:
        proxy.cut_next(4 * MiB)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: get(edge.url, image.file_path), range(4)))
        for status, body, whole in results:
            assert (status, whole) == (200, True)
            assert hashlib.sha512(body).hexdigest() == image.sha512
        wait_until(lambda: (edge.data_dir / image.id).is_file(), "the commit")

        # The proxy saw the image-data GET and its resume, for Glance's absolute URL;
        # metadata went straight to Glance.
        wait_until(lambda: len(proxy.requests) >= 2, "the relay to record the resume")
        assert [(r.url, r.range is not None) for r in proxy.requests] == [
            (real_glance.url + image.file_path, False),
            (real_glance.url + image.file_path, True),
        ]
        assert real_glance.count_requests("GET", f"/v2/images/{image.id}", at_least=1) >= 1
        assert real_glance.count_requests("GET", image.file_path, at_least=2) == 2

        # A ranged miss is a download passed through to Glance: it takes the proxy too.
        other = make_image(MiB)
        status, body, whole = get(edge.url, other.file_path, headers={"Range": "bytes=10-19"})
        assert (status, whole, body) == (206, True, other.data[10:20])
        # The relay records a request once it has finished relaying it, which can be
        # just after the client already holds the answer.
        wait_until(lambda: len(proxy.requests) >= 3, "the relay to record the ranged GET")
        assert proxy.requests[-1].url == real_glance.url + other.file_path
        assert proxy.requests[-1].range == "bytes=10-19"
        assert len(proxy.requests) == 3


def test_a_proxy_that_does_not_answer_is_bypassed(
    real_glance: LocalGlance, make_image: ImageFactory, tmp_path: Path
) -> None:
    image = make_image(2 * MiB + 1)
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    with EdgecacheProcess(
        tmp_path, glance_endpoints=[real_glance.url], auth_cache_ttl=1,
        options={"upstream": {"http_proxy": dead_proxy}},
    ) as edge:
        status, body, whole = get(edge.url, image.file_path)
        assert (status, whole, body) == (200, True, image.data)
        assert real_glance.count_requests("GET", image.file_path, at_least=1) == 1
        assert "unreachable" in edge.log_text()
