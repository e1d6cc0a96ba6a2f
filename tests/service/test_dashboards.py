"""The Prometheus rules and the Grafana dashboard in etc/ (docs/behaviour.md#metrics).

``promtool check rules`` and ``promtool test rules`` (Debian's prometheus
package) check the rules' syntax and behaviour; the dashboard's queries are
checked by the same parser (as recording rules), and every metric either file
names must be in a real scrape of a running daemon.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.edgecache import REPO_ROOT, EdgecacheProcess
from lab.polling import wait_until
from lab.units import MiB
from tests.service import Download, scrape
from tests.support.faultyglance import FaultyGlance

RULES = REPO_ROOT / "etc" / "prometheus" / "edgecache-rules.yml"
RULES_TEST = Path(__file__).parent / "promtool" / "edgecache-rules.test.yml"
DASHBOARD = REPO_ROOT / "etc" / "grafana" / "edgecache-dashboard.json"

_METRIC = re.compile(r"\bedgecache_[a-z0-9_]+")
#: What Grafana substitutes before a query reaches Prometheus.
_GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$job": ".+", "$instance": ".+"}


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (./scripts/test installs Debian's prometheus)")
    return tool


def _run(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [_promtool(), *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> list[str]:
    """Every PromQL query of the dashboard: panel targets and template variables."""
    board = dashboard()
    queries = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["definition"])
    return queries


def rule_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_promtool_check_rules() -> None:
    assert "SUCCESS: 8 rules found" in _run("check", "rules", str(RULES))


def test_promtool_rule_unit_tests() -> None:
    assert "SUCCESS" in _run("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Grafana does not check PromQL; promtool does, given the queries as recording rules."""
    rules = []
    for number, query in enumerate(dashboard_queries()):
        if query.startswith("label_values("):
            query = query.removeprefix("label_values(").rsplit(",", 1)[0]
        for variable, value in _GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        rules.append({"record": f"dashboard:query_{number}", "expr": query})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in _run("check", "rules", str(path))


def test_dashboard_shape() -> None:
    board = dashboard()
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    titles = {p["title"] for p in panels}
    for wanted in ("Request hit ratio", "Byte hit ratio", "Bytes served by source",
                   "Time to first byte", "Fills in progress", "Prefetch queue", "Cache size"):
        assert wanted in titles
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["description"], panel["title"]
    cells = set()
    for panel in panels:  # no two panels on the same grid cell
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))
        assert pos["x"] + pos["w"] <= 24


def _exported_names(families: dict[str, str], sample_names: set[str]) -> set[str]:
    """Sample names a scrape offers, counting declared families with no sample yet
    (a labelled counter before its first increment)."""
    names = set(sample_names)
    for family, kind in families.items():
        if kind == "counter":
            names.add(f"{family}_total")
        elif kind == "histogram":
            names.update(f"{family}_{suffix}" for suffix in ("bucket", "count", "sum"))
        else:
            names.add(family)
    return names


@pytest.fixture
def glance() -> Any:
    with FaultyGlance() as server:
        yield server


def test_every_metric_queried_is_in_a_real_scrape(glance: FaultyGlance, tmp_path: Path) -> None:
    image = glance.add_image(os.urandom(MiB))
    with EdgecacheProcess(tmp_path / "edgecache", glance_endpoints=[glance.url]) as daemon:
        for _ in range(2):  # a miss, then a hit
            got = Download(f"{daemon.url}/v2/images/{image['id']}/file").start().wait()
            assert got.status == 200
        wait_until(lambda: (daemon.data_dir / image["id"]).exists(), "commit")
        scraped = scrape(daemon.url)
    exported = _exported_names(scraped.families, scraped.sample_names())

    queried = {m for q in dashboard_queries() + rule_expressions() for m in _METRIC.findall(q)}
    assert queried, "no edgecache metric found in the queries"
    assert not queried - exported, f"queried but not exported: {sorted(queried - exported)}"

    # Recording-rule names are not metrics; the dashboard reads raw metrics only.
    assert not [q for q in dashboard_queries() if ":" in q.split("{")[0]]

    # Each panel's metrics have samples right after a miss and a hit, prefetch aside
    # (its counter has a sample once a prefetch finished).
    sampled = scraped.sample_names()
    for panel in dashboard()["panels"]:
        names = {m for t in panel["targets"] for m in _METRIC.findall(t["expr"])}
        names.discard("edgecache_prefetch_total")
        assert names <= sampled, (panel["title"], names - sampled)
