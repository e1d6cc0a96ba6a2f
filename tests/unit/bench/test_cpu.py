"""CPU seconds become seconds per GB delivered, and the box's rest is `other`."""

from __future__ import annotations

import pytest

from bench.scenarios import cpu_figures


def test_per_gb_and_other() -> None:
    seconds = {"peer": 1.0, "origin": 0.5, "clients": 0.25, "bench": 0.25, "box": 3.0}
    figures = cpu_figures(seconds, size=2 * 10**9, span=2.0)
    assert figures["cpu_peer_s_per_gb"] == pytest.approx(0.5)
    assert figures["cpu_origin_s_per_gb"] == pytest.approx(0.25)
    assert figures["cpu_other_s_per_gb"] == pytest.approx(0.5)
    assert figures["cpu_box_s_per_gb"] == pytest.approx(1.5)
    assert figures["cpu_box_cores"] == pytest.approx(1.5)


def test_no_origin_when_the_peer_is_the_origin() -> None:
    figures = cpu_figures({"peer": 1.0, "clients": 0.0, "bench": 0.0, "box": 1.0}, 10**9, 1.0)
    assert "cpu_origin_s_per_gb" not in figures
    assert figures["cpu_other_s_per_gb"] == pytest.approx(0.0)
