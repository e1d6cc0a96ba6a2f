"""A flaky link between edgecache and a real Glance: broken bodies resume.

See docs/behaviour.md#upstream-faults.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
from pathlib import Path

import pytest

from lab.edgecache import EdgecacheProcess, metric_value
from lab.glance import LocalGlance
from lab.polling import wait_until
from lab.units import MiB
from tests.fleet.conftest import ImageFactory, get
from tests.support.relay import Relay

SIZE = 24 * MiB + 4321


@pytest.mark.parametrize("cuts", [(7 * MiB,), (3 * MiB, 5 * MiB + 17, 1 * MiB)],
                         ids=["once", "three-times"])
def test_every_caller_gets_the_exact_bytes_across_cuts(
    real_glance: LocalGlance, make_image: ImageFactory, tmp_path: Path, cuts: tuple[int, ...]
) -> None:
    image = make_image(SIZE)
    with Relay(real_glance.url) as relay, EdgecacheProcess(
        tmp_path, glance_endpoints=[relay.url], auth_cache_ttl=1
    ) as edge:
        relay.cut_next(*cuts)
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            results = list(pool.map(lambda _: get(edge.url, image.file_path), range(5)))
        for status, body, whole in results:
            assert (status, whole, len(body)) == (200, True, SIZE)
            assert hashlib.sha512(body).hexdigest() == image.sha512
        wait_until(lambda: any(edge.data_dir.glob(image.id)), "the image to be committed")
        assert metric_value(edge.url, "edgecache_upstream_errors_total", reason="body") == len(cuts)

        # What went over the link: one plain GET, then one Range per cut, each
        # starting where the bytes edgecache had kept ended.
        wait_until(lambda: len(relay.file_requests(image.file_path)) >= len(cuts) + 1,
                   "the relay to record every GET (it does once it has relayed one)")
        relayed = relay.file_requests(image.file_path)
        assert len(relayed) == len(cuts) + 1
        assert relayed[0].range is None and relayed[0].status == 200
        starts = [0]
        for before, after in itertools.pairwise(relayed):
            assert before.cut
            assert after.status == 206
            assert after.range is not None
            start = int(after.range.removeprefix("bytes=").removesuffix("-"))
            # edgecache resumes from what it received: no more than what was relayed
            assert starts[-1] < start <= starts[-1] + before.body_bytes
            starts.append(start)
        assert not relayed[-1].cut
        assert starts[-1] + relayed[-1].body_bytes == SIZE
        relayed_bytes = sum(r.body_bytes for r in relayed)
        lost = [
            r.body_bytes - (nxt - start)
            for r, start, nxt in zip(relayed, starts, starts[1:], strict=False)
        ]
        assert relayed_bytes - SIZE == sum(lost)

        # The origin's own log: the same requests, the last one exactly the rest.
        wait_until(
            lambda: len([r for r in real_glance.request_log()
                         if r.method == "GET" and r.path == image.file_path
                         and not r.is_download_probe]) == len(cuts) + 1,
            "Glance to log every image-data GET",
        )
        log = [r for r in real_glance.request_log()
               if r.method == "GET" and r.path == image.file_path and not r.is_download_probe]
        assert [r.status for r in log] == [200] + [206] * len(cuts)
        # uWSGI's size counts the response headers too (a few hundred bytes)
        assert 0 <= log[-1].size - (SIZE - starts[-1]) < 1024
