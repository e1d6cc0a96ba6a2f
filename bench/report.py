"""Turn per-round figures into medians, same-pass ratios and quality-bar verdicts, as text and JSON.

Runs drift by up to ~45% between passes (docs/behaviour.md#measuring), so every ratio is taken
within one round (peers measured back to back) and only then is the median over rounds reported.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.scenarios import SCENARIOS, Figures


@dataclass
class Record:
    round: int
    scenario: str
    peer: str
    figures: Figures | None
    error: str | None = None


class Results:
    """All records of one run, with the look-ups the report needs."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records

    def values(self, scenario: str, peer: str, metric: str) -> dict[int, float]:
        out = {}
        for r in self.records:
            if r.scenario == scenario and r.peer == peer and r.figures:
                value = r.figures.get(metric)
                if value is not None and not math.isnan(value):
                    out[r.round] = value
        return out

    def median(self, scenario: str, peer: str, metric: str) -> float | None:
        vals = list(self.values(scenario, peer, metric).values())
        return statistics.median(vals) if vals else None

    def paired(
        self, scenario: str, metric: str, peer: str, other: str, op: Callable[[float, float], float]
    ) -> float | None:
        """Median over rounds of op(peer's figure, other's), both figures from the same round."""
        mine, theirs = self.values(scenario, peer, metric), self.values(scenario, other, metric)
        pairs = [op(mine[k], theirs[k]) for k in mine.keys() & theirs.keys() if theirs[k] != 0]
        return statistics.median(pairs) if pairs else None

    def errors(self) -> list[Record]:
        return [r for r in self.records if r.error]


def _ratio(a: float, b: float) -> float:
    return a / b


def _diff(a: float, b: float) -> float:
    return a - b


@dataclass
class Bar:
    what: str
    value: float | None
    unit: str
    target: str
    ok: bool | None  # None: not measured (a peer missing or the figure not exposed)


def bars(res: Results, peer: str = "edgecache") -> list[Bar]:
    """The quality bars for `peer`, each from figures taken in the same pass."""
    out: list[Bar] = []

    def ratio(what: str, scn: str, metric: str, other: str, target: float, higher: bool) -> None:
        value = res.paired(scn, metric, peer, other, _ratio)
        ok = None if value is None else (value >= target if higher else value <= target)
        out.append(Bar(what, value, "x", f"{'≥' if higher else '≤'} {target}", ok))

    def absolute(what: str, value: float | None, unit: str, target: float) -> None:
        ok = None if value is None else value <= target
        out.append(Bar(what, value, unit, f"≤ {target:g} {unit}", ok))

    ratio("hit 1 client vs Varnish", "hit1", "gbps", "varnish", 0.9, True)
    ratio("hit 1 client vs nginx", "hit1", "gbps", "nginx", 1.3, True)
    ratio("hit 8 clients vs Varnish", "hit8", "gbps", "varnish", 1.0, True)
    ratio("hit 8 clients vs nginx", "hit8", "gbps", "nginx", 1.3, True)
    absolute("hit 8 clients, slowest first byte", _worst(res, "hit8", peer), "ms", 25)
    ratio("cold miss 1 client vs nginx", "cold1", "gbps", "nginx", 1.2, True)
    ratio("cold miss 1 client vs Glance cache", "cold1", "gbps", "glance-cache", 3.0, True)
    for n in (8, 50):
        scn = f"cold{n}"
        gets = res.values(scn, peer, "upstream_gets")
        ok = None if not gets else all(v == 1 for v in gets.values())
        out.append(Bar(f"{n} cold: upstream GETs (max)", _max(gets), "", "= 1 every round", ok))
        ratio(f"{n} cold: slowest first byte vs Varnish", scn, "slowest_first_byte_ms",
              "varnish", 0.5, False)  # fmt: skip
        ratio(f"{n} cold: aggregate vs Varnish", scn, "gbps", "varnish", 0.8, True)
    eight = [*res.values("hit8", peer, "loop_stall_ms").values(),
             *res.values("cold8", peer, "loop_stall_ms").values()]  # fmt: skip
    absolute("event loop stall, 8 clients (hit, cold)", max(eight, default=None), "ms", 25)
    absolute("event loop stall, 50 clients", _max(res.values("cold50", peer, "loop_stall_ms")),
             "ms", 50)  # fmt: skip
    absolute("peak RSS, 50 clients", res.median("cold50", peer, "peak_rss_mib"), "MiB", 80)
    absolute("passthrough p99 added", res.paired("meta", "p99_ms", peer, "glance", _diff), "ms", 2)
    low = res.paired("meta-low", "p99_ms", peer, "glance", _diff)
    out.append(Bar("(info) passthrough p99 added, --low-rate", low, "ms", "-", None))
    return out


def _worst(res: Results, scn: str, peer: str) -> float | None:
    return res.median(scn, peer, "slowest_first_byte_ms")


def _max(values: dict[int, float]) -> float | None:
    return max(values.values()) if values else None


COLUMNS = {  # metric -> (header, format)
    "gbps": ("GB/s", "{:.2f}"),
    "slowest_first_byte_ms": ("slowest 1st byte ms", "{:.0f}"),
    "upstream_gets": ("upstream GETs", "{:.0f}"),
    "peak_rss_mib": ("peak RSS MiB", "{:.0f}"),
    "loop_stall_ms": ("loop stall ms (at most)", "{:.0f}"),
    "p50_ms": ("p50 ms", "{:.2f}"),
    "p99_ms": ("p99 ms", "{:.2f}"),
}


def _fmt(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def table(res: Results, peers: list[str], rounds: int) -> str:
    """One block per scenario: medians per peer, then same-pass ratios to Varnish and nginx."""
    lines: list[str] = []
    for scn in SCENARIOS:
        present = [p for p in peers if p in scn.peers and res.values(scn.key, p, _main(scn.key))]
        if not present:
            continue
        metrics = [m for m in COLUMNS if any(res.values(scn.key, p, m) for p in present)]
        if scn.key.startswith("meta"):
            refs = [("+p50 ms vs direct", "p50_ms"), ("+p99 ms vs direct", "p99_ms")]
        else:
            refs = [("x varnish", "varnish"), ("x nginx", "nginx")]
        header = ["peer"] + [COLUMNS[m][0] for m in metrics] + [r[0] for r in refs]
        rows = [header]
        for p in present:
            row = [p] + [_fmt(res.median(scn.key, p, m), COLUMNS[m][1]) for m in metrics]
            for _, ref in refs:
                if scn.key.startswith("meta"):
                    row.append(_fmt(res.paired(scn.key, ref, p, "glance", _diff), "{:+.2f}"))
                else:
                    row.append(_fmt(res.paired(scn.key, "gbps", p, ref, _ratio), "{:.2f}"))
            rows.append(row)
        lines.append(f"\n{scn.title} (median of {rounds} round{'s' if rounds > 1 else ''})")
        lines.extend(_grid(rows))
    return "\n".join(lines)


def _main(scenario: str) -> str:
    return "p99_ms" if scenario.startswith("meta") else "gbps"


def bars_table(items: list[Bar], peer: str) -> str:
    rows = [["quality bar", peer, "target", "verdict"]]
    for b in items:
        value = "not measured" if b.value is None else f"{b.value:.2f}{b.unit and ' ' + b.unit}"
        verdict = {True: "pass", False: "FAIL", None: "-"}[b.ok]
        rows.append([b.what, value, b.target, verdict])
    return "\n".join(_grid(rows))


def _grid(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  ".join(cells))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def write_json(path: Path, meta: dict[str, object], res: Results, items: list[Bar]) -> None:
    summary: dict[str, dict[str, dict[str, float | None]]] = {}
    for r in res.records:
        if r.figures:
            per_peer = summary.setdefault(r.scenario, {}).setdefault(r.peer, {})
            for metric in r.figures:
                per_peer[metric] = res.median(r.scenario, r.peer, metric)
    doc = {
        "meta": meta,
        "summary": summary,
        "bars": [asdict(b) for b in items],
        "records": [asdict(r) for r in res.records],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(doc), indent=2, allow_nan=False, default=str) + "\n")


def _finite(value: object) -> object:
    """NaN and infinities become null: they are not JSON, and one must not lose a whole run."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
