"""``GET /healthcheck`` in oslo.middleware's manner (docs/behaviour.md#http-surface), in-process.

200 ``OK`` / 503 with reasons; HEAD 204 / 503; JSON on ``Accept: application/json``,
with detail only for a caller on this host that speaks for itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from edgecache.api import health
from edgecache.api.health import HEALTH_KEY, _prefers_json
from tests.functional import Edge, start_edgecache
from tests.support.faultyglance import FaultyGlance

JSON = {"Accept": "application/json"}


@pytest.fixture
async def edge(aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path) -> Edge:
    return await start_edgecache(aiohttp_client, tmp_path / "cache", (faulty_glance.url,))


@pytest.fixture(autouse=True)
def probe_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """No reuse of the last write probe: each request sees the directory as it is now."""
    monkeypatch.setattr(health, "PROBE_TTL", 0.0)


async def test_healthy_is_200_ok_and_head_204(edge: Edge, faulty_glance: FaultyGlance) -> None:
    got = await edge.fetch("/healthcheck")
    assert (got.status, got.body) == (200, b"OK")
    assert got.headers["Content-Type"].startswith("text/plain")
    head = await edge.fetch("/healthcheck", method="HEAD")
    assert (head.status, head.body) == (204, b"")
    assert faulty_glance.requests == []  # never forwarded


async def test_json_detail_for_a_local_caller(edge: Edge) -> None:
    got = await edge.fetch("/healthcheck", headers=JSON)
    assert got.status == 200
    assert got.headers["Content-Type"].startswith("application/json")
    body = json.loads(got.body)
    assert body["detailed"] is True
    assert {r["class"]: r["reason"] for r in body["reasons"]} == {
        "Lifecycle": "OK", "CacheDirectory": "OK",
    }
    assert body["cache"]["directory"] == str(edge.root)
    assert body["cache"]["images"] == 0
    assert body["cache"]["max_size_bytes"] == edge.cache.max_size
    assert body["version"]


async def test_no_detail_for_a_relayed_caller(edge: Edge) -> None:
    got = await edge.fetch("/healthcheck", headers={**JSON, "X-Forwarded-For": "203.0.113.9"})
    assert got.status == 200
    assert json.loads(got.body) == {"detailed": False, "reasons": ["OK"]}


async def test_draining_is_503(edge: Edge) -> None:
    edge.app[HEALTH_KEY].draining = True
    got = await edge.fetch("/healthcheck")
    assert (got.status, got.body) == (503, b"DRAINING")
    head = await edge.fetch("/healthcheck", method="HEAD")
    assert (head.status, head.body) == (503, b"")
    detail = json.loads((await edge.fetch("/healthcheck", headers=JSON)).body)
    assert {r["class"]: r["reason"] for r in detail["reasons"]}["Lifecycle"] == "DRAINING"


async def test_unwritable_cache_directory_is_503_until_it_is_back(edge: Edge) -> None:
    incomplete = edge.root / "incomplete"
    moved = edge.root / "incomplete.away"
    incomplete.rename(moved)  # what a vanished mount looks like (root ignores mode bits)
    try:
        got = await edge.fetch("/healthcheck")
        assert (got.status, got.body) == (503, b"CACHE DIRECTORY NOT WRITABLE")
        detail = json.loads((await edge.fetch("/healthcheck", headers=JSON)).body)
        (storage,) = [r for r in detail["reasons"] if r["class"] == "CacheDirectory"]
        assert str(incomplete) in storage["details"]
        plain = json.loads(
            (await edge.fetch("/healthcheck", headers={**JSON, "Forwarded": "for=x"})).body
        )
        assert plain == {"detailed": False, "reasons": ["CACHE DIRECTORY NOT WRITABLE"]}
    finally:
        moved.rename(incomplete)
    got = await edge.fetch("/healthcheck")
    assert (got.status, got.body) == (200, b"OK")
    assert edge.incomplete_files() == []  # the probe leaves nothing behind


@pytest.mark.parametrize(
    ("accept", "json_wanted"),
    [
        ("", False),
        ("*/*", False),
        ("application/json", True),
        ("application/json, text/plain", False),  # a tie goes to text/plain, as in oslo
        ("text/plain;q=0.5, application/json", True),
        ("application/*", True),
        ("text/html", False),  # nothing offered matches: text/plain
        ("application/json;q=0", False),
        ("*/*;q=0.1, application/json;q=0.9", True),
    ],
)
def test_accept_negotiation(accept: str, json_wanted: bool) -> None:
    assert _prefers_json(accept) is json_wanted
