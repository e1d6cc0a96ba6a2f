"""edgecache in front of edgecache: a regional tier between rack nodes and Glance.

See docs/behaviour.md#tiers-and-stores.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
from contextlib import ExitStack
from pathlib import Path

from lab.edgecache import EdgecacheProcess
from lab.glance import LocalGlance
from lab.polling import wait_until
from lab.units import MiB
from tests.fleet.conftest import Image, ImageFactory, get
from tests.support.relay import Relay

EDGES = 2
BOOTS = 10


def _boot_all(edges: list[EdgecacheProcess], image: Image) -> None:
    """``BOOTS`` concurrent cold downloads on every edge; each must be the exact image."""
    with concurrent.futures.ThreadPoolExecutor(len(edges) * BOOTS) as pool:
        results = list(
            pool.map(lambda edge: get(edge.url, image.file_path), [e for e in edges] * BOOTS)
        )
    for status, body, whole in results:
        assert (status, whole, len(body)) == (200, True, image.size)
        assert hashlib.sha512(body).hexdigest() == image.sha512


def _origin_gets(glance: LocalGlance, image: Image) -> int:
    return sum(
        1 for r in glance.request_log()
        if r.method == "GET" and r.path == image.file_path and not r.is_download_probe
    )


def test_two_edges_behind_a_regional_node_cost_the_origin_one_image_get(
    real_glance: LocalGlance, make_image: ImageFactory, tmp_path: Path
) -> None:
    image = make_image(32 * MiB + 99)
    with ExitStack() as stack:
        regional = stack.enter_context(
            EdgecacheProcess(
                tmp_path / "regional", glance_endpoints=[real_glance.url], auth_cache_ttl=1
            )
        )
        edges = [
            stack.enter_context(
                EdgecacheProcess(
                    tmp_path / f"edge{n}", glance_endpoints=[regional.url], auth_cache_ttl=1
                )
            )
            for n in range(EDGES)
        ]
        _boot_all(edges, image)
        for node in (regional, *edges):
            wait_until((node.data_dir / image.id).is_file, "the commits")
        assert real_glance.count_requests("GET", image.file_path, at_least=1) == 1
        assert _origin_gets(real_glance, image) == 1


def test_without_a_regional_node_each_edge_fetches_once(
    real_glance: LocalGlance, make_image: ImageFactory, tmp_path: Path
) -> None:
    image = make_image(8 * MiB + 5)
    with ExitStack() as stack:
        edges = [
            stack.enter_context(
                EdgecacheProcess(
                    tmp_path / f"edge{n}", glance_endpoints=[real_glance.url], auth_cache_ttl=1
                )
            )
            for n in range(EDGES)
        ]
        _boot_all(edges, image)
        assert real_glance.count_requests("GET", image.file_path, at_least=EDGES) == EDGES


def test_an_edge_resuming_from_a_regional_node_still_costs_the_origin_one_get(
    real_glance: LocalGlance, make_image: ImageFactory, tmp_path: Path
) -> None:
    """The edge's Range resume is served by the regional node (from its fill or its file)."""
    image = make_image(48 * MiB + 7)
    with ExitStack() as stack:
        regional = stack.enter_context(
            EdgecacheProcess(
                tmp_path / "regional", glance_endpoints=[real_glance.url], auth_cache_ttl=1
            )
        )
        link = stack.enter_context(Relay(regional.url))
        link.cut_next(5 * MiB)
        edge = stack.enter_context(
            EdgecacheProcess(tmp_path / "edge", glance_endpoints=[link.url], auth_cache_ttl=1)
        )
        _boot_all([edge], image)
        wait_until(lambda: len(link.file_requests(image.file_path)) >= 2,
                   "the link to record the GET and its resume")
        relayed = link.file_requests(image.file_path)  # data GETs (download checks aside)
        assert [r.status for r in relayed] == [200, 206]
        assert real_glance.count_requests("GET", image.file_path, at_least=1) == 1
        wait_until(lambda: (regional.data_dir / image.id).is_file(), "the regional commit")
        assert _origin_gets(real_glance, image) == 1
