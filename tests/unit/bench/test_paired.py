"""The paired passthrough measurement keeps what a proxy adds, not the origin's stalls."""

from __future__ import annotations

import pytest

from bench.clients import Latencies, record_tick


def test_an_origin_stall_seen_by_both_is_not_counted_against_the_proxy() -> None:
    results = {"glance": Latencies(), "edgecache": Latencies()}
    for direct, proxied in ((0.006, 0.007), (0.130, 0.131), (0.006, 0.008)):
        record_tick(results, "glance", {"glance": direct, "edgecache": proxied})
    assert results["glance"].seconds == [0.006, 0.130, 0.006]
    assert results["edgecache"].seconds == pytest.approx([0.001, 0.001, 0.002])
    assert results["edgecache"].quantile(0.99) < 0.003  # the 130 ms stall is not in it


def test_a_failed_request_is_an_error_and_no_difference() -> None:
    results = {"glance": Latencies(), "edgecache": Latencies(), "nginx": Latencies()}
    record_tick(results, "glance", {"glance": None, "edgecache": 0.01, "nginx": 0.01})
    record_tick(results, "glance", {"glance": 0.01, "edgecache": None, "nginx": 0.012})
    assert [results[n].errors for n in ("glance", "edgecache", "nginx")] == [1, 2, 1]
    assert results["nginx"].seconds == pytest.approx([0.002])
    assert results["edgecache"].seconds == []
