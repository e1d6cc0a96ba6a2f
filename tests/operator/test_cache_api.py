"""The Glance cache API's shapes and status codes, and edgecache's additions (raw HTTP).

docs/glance-wire.md#cache-management-api and #legacy-cache-management. Upstream is
FaultyGlance: these answers are edgecache's own, and a fake lets a test make Glance refuse.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.edgecache import EdgecacheProcess, metric_value
from lab.polling import wait_until
from lab.units import MiB
from tests.operator.support import cache_state, download, operator_daemon, request
from tests.support.faultyglance import Fault, FaultyGlance


@pytest.fixture
def edge(tmp_path: Path, faulty_glance_thread: FaultyGlance) -> Iterator[EdgecacheProcess]:
    with operator_daemon(tmp_path, [faulty_glance_thread.url]) as daemon:
        yield daemon


def add(fg: FaultyGlance, size: int = MiB, **kw: Any) -> str:
    meta = fg.add_image(os.urandom(size), **kw)
    return str(meta["id"])


def test_versions_list_the_cache_api(edge: EdgecacheProcess) -> None:
    status, _, body = request(edge.url, "GET", "/versions")
    ids = {v["id"]: v["status"] for v in json.loads(body)["versions"]}
    assert status == 200
    assert ids["v2.14"] in ("SUPPORTED", "CURRENT")
    assert ids["v2.18"] == "CURRENT"  # clean and prune are implemented


def test_queue_list_delete_shapes(
    edge: EdgecacheProcess, faulty_glance_thread: FaultyGlance
) -> None:
    fg = faulty_glance_thread
    image_id = add(fg)
    status, _, body = request(edge.url, "PUT", f"/v2/cache/{image_id}")
    assert (status, body) == (202, b"")
    wait_until(lambda: bool(cache_state(edge.url)["cached_images"]), "the prefetch")

    status, headers, body = request(edge.url, "GET", "/v2/cache")
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    doc = json.loads(body)
    assert set(doc) == {"cached_images", "queued_images"}  # glanceclient prints any other key
    assert doc["queued_images"] == []
    (entry,) = doc["cached_images"]
    assert entry["image_id"] == image_id
    assert entry["size"] == MiB
    for field in ("last_accessed", "last_modified"):
        assert isinstance(entry[field], float)
    assert entry["hits"] == 0
    assert entry["pinned"] is False

    assert fg.count("GET", f"/v2/images/{image_id}/file") == 1
    status, _, _ = request(edge.url, "DELETE", f"/v2/cache/{image_id}")
    assert status == 204
    assert cache_state(edge.url)["cached_images"] == []
    status, _, body = request(edge.url, "DELETE", f"/v2/cache/{image_id}")
    assert status == 404, "neither cached nor queued"
    assert "message" in json.loads(body)["error"]
    assert metric_value(edge.url, "edgecache_prefetch_total", result="cached") == 1
    assert metric_value(edge.url, "edgecache_prefetch_queue_length") == 0


def test_queue_refusals(edge: EdgecacheProcess, faulty_glance_thread: FaultyGlance) -> None:
    fg = faulty_glance_thread
    unknown = str(uuid.uuid4())
    assert request(edge.url, "PUT", f"/v2/cache/{unknown}")[0] == 404
    assert request(edge.url, "PUT", "/v2/cache/not-an-image")[0] == 404
    queued_in_glance = add(fg, status="queued")
    status, _, body = request(edge.url, "PUT", f"/v2/cache/{queued_in_glance}")
    assert status == 400, body
    assert queued_in_glance not in cache_state(edge.url)["queued_images"]


@pytest.mark.parametrize(
    ("target", "cache_left", "queue_left"),
    [(None, False, False), ("", False, False), ("both", False, False),
     ("cache", False, True), ("queue", True, False)],
)
def test_clear_targets(
    tmp_path: Path, faulty_glance_thread: FaultyGlance,
    target: str | None, cache_left: bool, queue_left: bool,
) -> None:
    fg = faulty_glance_thread
    cached = add(fg)
    slow = add(fg, size=4 * MiB)
    # A prefetch that stays queued long enough to be seen: 4 MiB at 64 KiB/s.
    with operator_daemon(tmp_path, [fg.url], prefetch={"max_rate": "64K"}) as edge:
        download(edge.url, cached)
        wait_until(lambda: bool(cache_state(edge.url)["cached_images"]), "the commit")
        assert request(edge.url, "PUT", f"/v2/cache/{slow}")[0] == 202
        headers = {} if target is None else {"x-image-cache-clear-target": target}
        status, _, body = request(edge.url, "DELETE", "/v2/cache", headers=headers)
        assert status == 204, body
        state = cache_state(edge.url)
        assert bool(state["cached_images"]) is cache_left
        assert bool(state["queued_images"]) is queue_left
        if not queue_left:
            # The prefetch-only fill stops with its queue entry.
            wait_until(lambda: not cache_state(edge.url)["fills"], "the prefetch to stop")
        status, _, body = request(
            edge.url, "DELETE", "/v2/cache", headers={"x-image-cache-clear-target": "cached"}
        )
        assert status == 400


def test_clean_prune_and_methods(edge: EdgecacheProcess) -> None:
    status, _, body = request(edge.url, "POST", "/v2/cache/clean")
    assert status == 200
    status, _, body = request(edge.url, "POST", "/v2/cache/prune")
    assert status == 200
    assert json.loads(body) == {"total_files_pruned": 0, "total_bytes_pruned": 0}
    for method, path in [
        ("POST", "/v2/cache"), ("PATCH", "/v2/cache"), ("PUT", "/v2/cache"),
        ("GET", f"/v2/cache/{uuid.uuid4()}"), ("POST", f"/v2/cache/{uuid.uuid4()}"),
        ("GET", "/v2/cache/clean"), ("DELETE", "/v2/cache/prune"),
        ("POST", "/v2/cached_images"), ("PUT", f"/v2/cached_images/{uuid.uuid4()}"),
        ("GET", f"/v2/queued_images/{uuid.uuid4()}"),
    ]:
        status, headers, body = request(edge.url, method, path)
        assert status == 405, (method, path, status)
        assert "allow" in headers
        assert json.loads(body)["error"]["code"] == 405
    status, _, _ = request(edge.url, "GET", f"/v2/cache/nodes/{uuid.uuid4()}")
    assert status == 409
    # Under a path prefix too (docs/glance-wire.md#path-prefixes).
    assert request(edge.url, "GET", "/image/v2/cache")[0] == 200


def test_legacy_routes(edge: EdgecacheProcess, faulty_glance_thread: FaultyGlance) -> None:
    fg = faulty_glance_thread
    image_id = add(fg)
    status, _, body = request(edge.url, "PUT", f"/v2/queued_images/{image_id}")
    assert (status, json.loads(body)) == (200, None)
    wait_until(lambda: image_id in {e["image_id"] for e in cache_state(edge.url)["cached_images"]},
               "the legacy queue to be fetched")
    status, _, body = request(edge.url, "GET", "/v2/cached_images")
    assert status == 200
    assert [e["image_id"] for e in json.loads(body)["cached_images"]] == [image_id]
    status, _, body = request(edge.url, "GET", "/v2/queued_images")
    assert (status, json.loads(body)) == (200, {"queued_images": []})
    status, _, body = request(edge.url, "DELETE", f"/v2/cached_images/{image_id}")
    assert (status, json.loads(body)) == (200, None)
    assert cache_state(edge.url)["cached_images"] == []
    status, _, body = request(edge.url, "DELETE", "/v2/cached_images")
    assert (status, json.loads(body)) == (200, {"num_deleted": 0})
    status, _, body = request(edge.url, "DELETE", "/v2/queued_images")
    assert (status, json.loads(body)) == (200, {"num_deleted": 0})


def test_failed_prefetch_is_reported(
    edge: EdgecacheProcess, faulty_glance_thread: FaultyGlance
) -> None:
    fg = faulty_glance_thread
    image_id = add(fg, fault=Fault(status=403))
    assert request(edge.url, "PUT", f"/v2/cache/{image_id}")[0] == 202
    wait_until(lambda: not cache_state(edge.url)["queued_images"], "the prefetch to give up")
    state = cache_state(edge.url)
    assert state["cached_images"] == []
    (failure,) = state["failed"]
    assert failure["image_id"] == image_id
    assert "403" in failure["error"]
    assert metric_value(edge.url, "edgecache_prefetch_total", result="failed") == 1


def test_pin_requires_room(tmp_path: Path, faulty_glance_thread: FaultyGlance) -> None:
    fg = faulty_glance_thread
    a, b = add(fg, size=3 * MiB), add(fg, size=3 * MiB)
    with operator_daemon(tmp_path, [fg.url], max_size="5M") as edge:
        download(edge.url, a)
        status, _, body = request(edge.url, "PUT", f"/v2/cache/{a}/pin")
        assert status == 200, body
        assert json.loads(body)["pinned"] is True
        status, _, body = request(edge.url, "PUT", f"/v2/cache/{b}/pin")
        assert status == 409
        assert "max_size" in json.loads(body)["error"]["message"]
        status, _, body = request(edge.url, "DELETE", f"/v2/cache/{a}/pin")
        assert (status, json.loads(body)["pinned"]) == (200, False)
        assert request(edge.url, "DELETE", f"/v2/cache/{b}/pin")[0] == 404
