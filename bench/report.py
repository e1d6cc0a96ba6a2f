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

from bench.ceilings import MISS_STAGES, verified_miss_ceiling
from bench.scenarios import CACHES, IDLE, MACHINE, SCENARIOS, Figures


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

    def rounds(self) -> list[int]:
        return sorted({r.round for r in self.records})

    def ceilings(self) -> dict[int, tuple[float, str]]:
        """Per round: the verified-miss ceiling (GB/s) and the stage that sets it.

        The stages are that round's machine figures plus direct Glance (the `glance` peer's cold1).
        """
        out = {}
        glance = self.values("cold1", "glance", "gbps")
        for rnd in self.rounds():
            figures: Figures = {"glance_direct_gbps": glance.get(rnd)}
            for metric in ("sha512_gbps", "disk_write_gbps"):
                figures[metric] = self.values("ceilings", MACHINE, metric).get(rnd)
            found = verified_miss_ceiling(figures)
            if found:
                out[rnd] = found
        return out

    def vs_ceiling(self, peer: str) -> float | None:
        """Median over rounds of the peer's cold1 GB/s / that round's verified-miss ceiling."""
        ceil, mine = self.ceilings(), self.values("cold1", peer, "gbps")
        pairs = [mine[k] / ceil[k][0] for k in mine.keys() & ceil.keys()]
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
    near = res.vs_ceiling(peer)
    out.append(Bar("cold miss vs verified-miss ceiling", near, "x", "≥ 0.8",
                   None if near is None else near >= 0.8))  # fmt: skip
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
    fifty = [*res.values("hit50", peer, "loop_stall_ms").values(),
             *res.values("cold50", peer, "loop_stall_ms").values()]  # fmt: skip
    absolute("event loop stall, 50 clients (hit, cold)", max(fifty, default=None), "ms", 50)
    idle = _max(res.values(f"hit8-idle{IDLE}", peer, "loop_stall_ms"))
    absolute(f"event loop stall, 8 clients + {IDLE:,} idle", idle, "ms", 25)
    absolute("peak RSS, 50 clients", res.median("cold50", peer, "peak_rss_mib"), "MiB", 80)
    rss200 = [v for k in ("hit200", "cold200") if (v := res.median(k, peer, "peak_rss_mib"))]
    absolute("peak RSS, 200 clients (hit, cold)", max(rss200, default=None), "MiB", 120)
    two = [*res.values("hit200", peer, "loop_stall_ms").values(),
           *res.values("cold200", peer, "loop_stall_ms").values()]  # fmt: skip
    out.append(Bar("(info) event loop stall, 200 clients", max(two, default=None), "ms", "-", None))
    absolute("passthrough p99 added", res.paired("meta", "p99_ms", peer, "glance", _diff), "ms", 2)
    low = res.paired("meta-low", "p99_ms", peer, "glance", _diff)
    out.append(Bar("(info) passthrough p99 added, --low-rate", low, "ms", "-", None))
    # The same overhead with the origin's own time taken out request by request: its stalls
    # fall on single requests, so end-to-end p99s say where they fell (clients.outside_origin).
    for q in ("p50", "p99"):
        added = res.paired("meta-low", f"own_{q}_ms", peer, "glance", _diff)
        absolute(f"passthrough {q} added, outside origin, --low-rate", added, "ms", 2)
    vs_nginx = res.paired("meta", "p99_ms", peer, "nginx", _ratio)
    out.append(Bar("passthrough p99 at --rate vs nginx", vs_nginx, "x", "≤ 1.0",
                   None if vs_nginx is None else vs_nginx <= 1.0))  # fmt: skip
    own = res.paired("meta", "own_p99_ms", peer, "nginx", _ratio)
    out.append(Bar("passthrough p99 at --rate vs nginx, outside origin", own, "x", "≤ 1.0",
                   None if own is None else own <= 1.0))  # fmt: skip
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
    "own_p50_ms": ("p50 ms outside origin", "{:.2f}"),
    "own_p99_ms": ("p99 ms outside origin", "{:.2f}"),
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
            refs = [("+p50 ms vs direct", "p50_ms"), ("+p99 ms vs direct", "p99_ms"),
                    ("+p50 outside origin", "own_p50_ms"), ("+p99 outside origin", "own_p99_ms")]
        else:
            refs = [("x varnish", "varnish"), ("x nginx", "nginx")]
        header = ["peer"] + [COLUMNS[m][0] for m in metrics] + [r[0] for r in refs]
        if scn.key == "cold1":
            header.append("x ceiling")
        rows = [header]
        for p in present:
            row = [p] + [_fmt(res.median(scn.key, p, m), COLUMNS[m][1]) for m in metrics]
            for _, ref in refs:
                if scn.key.startswith("meta"):
                    row.append(_fmt(res.paired(scn.key, ref, p, "glance", _diff), "{:+.2f}"))
                else:
                    row.append(_fmt(res.paired(scn.key, "gbps", p, ref, _ratio), "{:.2f}"))
            if scn.key == "cold1":  # a cache's miss only: Glance direct neither hashes nor writes
                row.append(_fmt(res.vs_ceiling(p) if p in CACHES else None, "{:.2f}"))
            rows.append(row)
        lines.append(f"\n{scn.title} (median of {rounds} round{'s' if rounds > 1 else ''})")
        lines.extend(_grid(rows))
    return "\n".join(lines)


CEILING_ROWS = {  # figure -> what it is
    "glance_direct_gbps": "direct Glance (the glance peer's cold1)",
    "sha512_gbps": "sha512, one core (hashlib, 4 MiB updates)",
    "disk_write_gbps": "disk write + fdatasync, image-sized file",
    "loopback_gbps": "loopback TCP, one stream, 1 MiB sends (info)",
}


def ceilings_table(res: Results, peers: list[str], rounds: int) -> str:
    """The machine's limits this run, the verified-miss ceiling and each peer's cold1 against it."""
    per_round = res.ceilings()
    if not res.values("ceilings", MACHINE, "sha512_gbps"):
        return ""
    rows = [["ceiling", "GB/s"]]
    for metric, what in CEILING_ROWS.items():
        if metric == "glance_direct_gbps":
            value = res.median("cold1", "glance", "gbps")
        else:
            value = res.median("ceilings", MACHINE, metric)
        rows.append([what, _fmt(value, "{:.2f}")])
    ceiling = statistics.median(v for v, _ in per_round.values()) if per_round else None
    binding = sorted({name for _, name in per_round.values()})
    shown = ", ".join(CEILING_ROWS[n].split(" (")[0].split(",")[0] for n in binding) or "-"
    rows.append([f"verified-miss ceiling = min of the first three (set by: {shown})",
                 _fmt(ceiling, "{:.2f}")])  # fmt: skip
    lines = [f"\nceilings, measured in this run (median of {rounds} round{'s' * (rounds > 1)})"]
    lines.extend(_grid(rows))
    fractions = [["peer", "cold1 GB/s", "x ceiling"]]
    for p in (p for p in peers if p in CACHES):
        near = res.vs_ceiling(p)
        if near is not None:
            fractions.append([p, _fmt(res.median("cold1", p, "gbps"), "{:.2f}"), f"{near:.2f}"])
    if len(fractions) > 1:
        lines.append("")
        lines.extend(_grid(fractions))
    elif not per_round:
        stages = ", ".join(MISS_STAGES)
        lines.append(f"(no verified-miss ceiling: needs {stages}, i.e. the glance peer in cold1)")
    return "\n".join(lines)


CPU_COLUMNS = {  # metric -> header
    "cpu_peer_s_per_gb": "peer",
    "cpu_origin_s_per_gb": "origin Glance",
    "cpu_clients_s_per_gb": "clients (curl)",
    "cpu_bench_s_per_gb": "bench",
    "cpu_other_s_per_gb": "other",
    "cpu_box_s_per_gb": "box",
}


def cpu_table(res: Results, peers: list[str], rounds: int) -> str:
    """CPU seconds per GB delivered, per process group, for every download scenario and peer."""
    rows = [["scenario", "peer", *CPU_COLUMNS.values(), "cores busy"]]
    for scn in SCENARIOS:
        for p in peers:
            if not res.values(scn.key, p, "cpu_box_s_per_gb"):
                continue
            cells = [_fmt(res.median(scn.key, p, m), "{:.2f}") for m in CPU_COLUMNS]
            cores = _fmt(res.median(scn.key, p, "cpu_box_cores"), "{:.2f}")
            rows.append([scn.key, p, *cells, cores])
    if len(rows) == 1:
        return ""
    title = (
        f"\nwhere the CPU goes: CPU s per GB delivered to the clients (median of {rounds}"
        f" round{'s' * (rounds > 1)}); peer = its process tree, origin = the Glance it fills"
        " from (- when it is that Glance), other = box - the rest; cores busy = box CPU s / span"
    )
    return "\n".join([title, *_grid(rows)])


SCALING_FIGURES = {  # metric -> (label, format)
    "gbps": ("GB/s", "{:.2f}"),
    "slowest_first_byte_ms": ("slowest 1st byte ms", "{:.0f}"),
    "peak_rss_mib": ("peak RSS MiB", "{:.0f}"),
    "loop_stall_ms": ("loop stall ms (at most)", "{:.0f}"),
}
CLIENTS = (1, 8, 50, 200)


def scaling_table(res: Results, peers: list[str], rounds: int) -> str:
    """Per peer: each figure at 1, 8, 50 and 200 clients, hits then cold, and 8 + idle."""
    idle_key = f"hit8-idle{IDLE}"
    blocks = []
    for p in peers:
        rows = [[p, *(str(n) for n in CLIENTS), f"8 + {IDLE:,} idle"]]
        for kind in ("hit", "cold"):
            for metric, (label, fmt) in SCALING_FIGURES.items():
                cells = [_fmt(res.median(f"{kind}{n}", p, metric), fmt) for n in CLIENTS]
                extra = _fmt(res.median(idle_key, p, metric), fmt) if kind == "hit" else ""
                if any(c != "-" for c in cells) or extra not in ("", "-"):
                    rows.append([f"{kind} {label}", *cells, extra])
        if len(rows) > 1:
            still = res.median(idle_key, p, "idle_open_after")
            if still is not None:
                rows.append(["idle connections still open after the batch", "", "", "", "",
                             f"{still:.0f}"])  # fmt: skip
            blocks.extend(["", *_grid(rows)])
    if not blocks:
        return ""
    head = f"\nscaling (median of {rounds} round{'s' * (rounds > 1)}; '-': not run)"
    return "\n".join([head, *blocks[1:]])


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
