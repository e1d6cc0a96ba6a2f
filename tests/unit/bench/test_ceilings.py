"""The verified-miss ceiling is the slowest stage, per round, and needs every stage."""

from __future__ import annotations

import pytest

from bench.ceilings import verified_miss_ceiling
from bench.report import Record, Results, bars


def test_ceiling_is_the_slowest_stage() -> None:
    figures = {"glance_direct_gbps": 2.3, "sha512_gbps": 1.1, "disk_write_gbps": 1.8}
    assert verified_miss_ceiling(figures) == (1.1, "sha512_gbps")


def test_no_ceiling_without_every_stage() -> None:
    assert verified_miss_ceiling({"sha512_gbps": 1.1, "disk_write_gbps": 1.8}) is None
    assert verified_miss_ceiling({"glance_direct_gbps": 0.0, "sha512_gbps": 1.1,
                                  "disk_write_gbps": 1.8}) is None  # fmt: skip


def _round(rnd: int, glance: float, sha: float, disk: float, edge: float) -> list[Record]:
    return [
        Record(rnd, "ceilings", "machine", {"sha512_gbps": sha, "disk_write_gbps": disk}),
        Record(rnd, "cold1", "glance", {"gbps": glance}),
        Record(rnd, "cold1", "edgecache", {"gbps": edge}),
    ]


def test_fraction_is_taken_per_round_then_the_median() -> None:
    res = Results([
        *_round(1, glance=2.0, sha=1.0, disk=1.5, edge=0.5),   # 0.5 of sha512
        *_round(2, glance=2.0, sha=1.2, disk=0.6, edge=0.54),  # 0.9 of the disk
        *_round(3, glance=2.0, sha=1.0, disk=1.5, edge=0.8),   # 0.8 of sha512
    ])  # fmt: skip
    assert res.ceilings()[2] == (0.6, "disk_write_gbps")
    assert res.vs_ceiling("edgecache") == pytest.approx(0.8)
    bar = next(b for b in bars(res) if b.what == "cold miss vs verified-miss ceiling")
    assert bar.ok is True


def test_a_round_without_direct_glance_has_no_ceiling() -> None:
    res = Results([Record(1, "ceilings", "machine", {"sha512_gbps": 1.0, "disk_write_gbps": 1.0}),
                   Record(1, "cold1", "edgecache", {"gbps": 0.5})])  # fmt: skip
    assert res.ceilings() == {}
    assert res.vs_ceiling("edgecache") is None
