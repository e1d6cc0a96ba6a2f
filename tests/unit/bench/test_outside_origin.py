"""The passthrough figures keep what a proxy adds, not the time the origin spent on a request."""

from __future__ import annotations

import pytest

from bench.clients import TAG, Latencies, outside_origin
from bench.scenarios import _origin_msecs
from lab.glance import RequestRecord


def test_an_origin_stall_on_one_request_is_not_counted_against_the_proxy() -> None:
    proxied = Latencies(by_tag={"edgecache.0": 0.007, "edgecache.1": 0.231, "edgecache.2": 0.008})
    origin_msecs = {"edgecache.0": 6, "edgecache.1": 229, "edgecache.2": 6, "glance.0": 5}
    own = outside_origin(proxied, origin_msecs)
    assert own.seconds == pytest.approx([0.001, 0.002, 0.002])
    assert own.quantile(0.99) < 0.003  # the 229 ms the origin spent is not in it


def test_a_request_the_origin_never_logged_is_an_error_not_a_figure() -> None:
    proxied = Latencies(errors=1, by_tag={"nginx.0": 0.010, "nginx.1": 0.012})
    own = outside_origin(proxied, {"nginx.1": 10})
    assert own.seconds == pytest.approx([0.002])
    assert own.errors == 2


def test_a_clock_coarser_than_the_request_never_gives_a_negative_latency() -> None:
    # uWSGI logs whole milliseconds: a 4.6 ms request can be logged as 5
    own = outside_origin(Latencies(by_tag={"glance.0": 0.0046}), {"glance.0": 5})
    assert own.seconds == [0.0]


class _LoggedOrigin:
    """Just the origin's request log, as uWSGI wrote it."""

    def __init__(self, records: list[RequestRecord]) -> None:
        self.records = records

    def request_log(self) -> list[RequestRecord]:
        return self.records


def test_each_tag_takes_the_first_line_the_origin_logged_for_it() -> None:
    path = "/v2/images/0f5e"
    origin = _LoggedOrigin([
        RequestRecord("GET", path, f"{TAG}=edgecache.0", 200, 900, 7),
        RequestRecord("GET", path, f"{TAG}=edgecache.0", 200, 900, 3),  # the proxy asked again
        RequestRecord("GET", path, f"x=1&{TAG}=glance.4", 200, 900, 5),
        RequestRecord("GET", path, "", 200, 900, 40),  # untagged: someone else's request
    ])
    found = _origin_msecs(origin, expected=2, timeout=0)  # type: ignore[arg-type]
    assert found == {"edgecache.0": 7, "glance.4": 5}
