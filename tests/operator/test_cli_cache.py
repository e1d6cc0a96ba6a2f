"""``edgecache cache ...`` against a running daemon: every subcommand and its failure modes.

Upstream is FaultyGlance where a real Glance adds nothing (and cannot refuse on demand).
Exit codes: 0 done, 1 refused or failed, 2 usage, 3 unreachable.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.edgecache import EdgecacheProcess
from lab.polling import wait_until
from lab.ports import free_port
from lab.units import MiB
from tests.operator.support import cache_state, cached_ids, download, edgecache_cli, operator_daemon
from tests.support.faultyglance import Fault, FaultyGlance


@pytest.fixture
def fg(faulty_glance_thread: FaultyGlance) -> FaultyGlance:
    return faulty_glance_thread


@pytest.fixture
def edge(tmp_path: Path, fg: FaultyGlance) -> Iterator[EdgecacheProcess]:
    with operator_daemon(tmp_path, [fg.url], max_size="8M") as daemon:
        yield daemon


def add(fg: FaultyGlance, size: int = MiB, fault: Fault | None = None) -> str:
    return str(fg.add_image(os.urandom(size), fault=fault)["id"])


def test_list_empty_and_json(edge: EdgecacheProcess) -> None:
    result = edgecache_cli(edge.url, "list")
    assert result.returncode == 0, result.stderr
    assert "No cached or queued images." in result.stdout
    assert "0 cached, 0 B of 8.0 MiB used" in result.stdout
    result = edgecache_cli(edge.url, "--format", "json", "list")
    doc = json.loads(result.stdout)
    assert doc["cached_images"] == [] and doc["queued_images"] == []
    assert doc["usage"]["max_size"] == 8 * MiB


def test_queue_wait_list_delete(edge: EdgecacheProcess, fg: FaultyGlance) -> None:
    first, second = add(fg, 2 * MiB), add(fg, MiB)
    result = edgecache_cli(edge.url, "queue", "--wait", first, second)
    assert result.returncode == 0, result.stderr
    assert f"Cached {first}" in result.stdout and f"Cached {second}" in result.stdout

    listing = edgecache_cli(edge.url, "list").stdout
    (row,) = [line for line in listing.splitlines() if first in line]
    assert "cached" in row and "2.0 MiB" in row and "100%" in row
    assert "2 cached, 3.0 MiB of 8.0 MiB used" in listing

    result = edgecache_cli(edge.url, "delete", first)
    assert (result.returncode, result.stdout.strip()) == (0, f"Deleted {first}")
    assert cached_ids(edge.url) == {second}
    result = edgecache_cli(edge.url, "delete", first)
    assert result.returncode == 1
    assert "404" in result.stderr and f"Image {first} not found" in result.stderr


def test_queue_json_and_refusals(edge: EdgecacheProcess, fg: FaultyGlance) -> None:
    good, unknown = add(fg), str(uuid.uuid4())
    result = edgecache_cli(edge.url, "--format", "json", "queue", good, unknown)
    assert result.returncode == 1, "one of the two was refused"
    doc = json.loads(result.stdout)
    assert doc["queued"] == [good]
    assert "404" in doc["errors"][0]
    assert f"Image {unknown} not found" in result.stderr


def test_queue_wait_reports_a_failed_prefetch(edge: EdgecacheProcess, fg: FaultyGlance) -> None:
    refused = add(fg, fault=Fault(status=403))
    result = edgecache_cli(edge.url, "queue", "--wait", refused)
    assert result.returncode == 1
    assert f"prefetch of {refused} failed: Glance answered 403" in result.stderr


def test_queue_wait_timeout(tmp_path: Path, fg: FaultyGlance) -> None:
    slow = add(fg, 4 * MiB)
    with operator_daemon(tmp_path, [fg.url], prefetch={"max_rate": "256K"}) as edge:
        result = edgecache_cli(edge.url, "queue", "--wait", "--wait-timeout", "1", slow)
        assert result.returncode == 1
        assert f"{slow} not cached after 1 s" in result.stderr
        listing = edgecache_cli(edge.url, "list").stdout
        (row,) = [line for line in listing.splitlines() if slow in line]
        assert "fetching" in row and "% of 4.0 MiB" in row


@pytest.mark.parametrize("target", ["cache", "queue", "both"])
def test_clear(tmp_path: Path, fg: FaultyGlance, target: str) -> None:
    cached, slow = add(fg), add(fg, 4 * MiB)
    with operator_daemon(tmp_path, [fg.url], prefetch={"max_rate": "64K"}) as edge:
        download(edge.url, cached)
        wait_until(lambda: cached in cached_ids(edge.url), "the commit")
        assert edgecache_cli(edge.url, "queue", slow).returncode == 0
        result = edgecache_cli(edge.url, "clear", "--target", target)
        assert result.returncode == 0, result.stderr
        state = cache_state(edge.url)
        assert bool(state["cached_images"]) is (target == "queue")
        assert bool(state["queued_images"]) is (target == "cache")


def test_clear_bad_target_is_a_usage_error(edge: EdgecacheProcess) -> None:
    result = edgecache_cli(edge.url, "clear", "--target", "cached")
    assert result.returncode == 2
    assert "Invalid value for '--target'" in result.stderr


def test_pin_unpin(edge: EdgecacheProcess, fg: FaultyGlance) -> None:
    small, big = add(fg, 2 * MiB), add(fg, 7 * MiB)
    download(edge.url, small)
    wait_until(lambda: small in cached_ids(edge.url), "the commit")
    result = edgecache_cli(edge.url, "pin", small)
    assert (result.returncode, result.stdout.strip()) == (0, f"Pinned {small}")
    (row,) = [line for line in edgecache_cli(edge.url, "list").stdout.splitlines() if small in line]
    assert "pinned" in row
    # 2 + 7 MiB pinned would not fit in 8 MiB.
    result = edgecache_cli(edge.url, "pin", big)
    assert result.returncode == 1
    assert "409" in result.stderr and "max_size" in result.stderr
    result = edgecache_cli(edge.url, "unpin", small)
    assert (result.returncode, result.stdout.strip()) == (0, f"Unpinned {small}")
    result = edgecache_cli(edge.url, "unpin", big)
    assert result.returncode == 1 and "404" in result.stderr
    result = edgecache_cli(edge.url, "pin", str(uuid.uuid4()))
    assert result.returncode == 1 and "404" in result.stderr


def test_verify(edge: EdgecacheProcess, fg: FaultyGlance) -> None:
    image = add(fg)
    result = edgecache_cli(edge.url, "verify")
    assert (result.returncode, result.stdout.strip()) == (0, "No cached images.")
    download(edge.url, image)
    wait_until(lambda: image in cached_ids(edge.url), "the commit")
    result = edgecache_cli(edge.url, "verify", image)
    assert (result.returncode, result.stdout.strip()) == (0, f"{image}  ok")
    result = edgecache_cli(edge.url, "--format", "json", "verify")
    assert json.loads(result.stdout)["images"][0]["result"] == "ok"
    result = edgecache_cli(edge.url, "verify", str(uuid.uuid4()))
    assert result.returncode == 1 and "is not cached" in result.stderr


@pytest.mark.parametrize(
    "args",
    [["list"], ["queue", "x"], ["delete", "x"], ["clear"], ["pin", "x"], ["unpin", "x"],
     ["verify"]],
)
def test_unreachable_daemon(args: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = edgecache_cli(url, *args)
    assert result.returncode == 3
    assert f"cannot reach edgecache at {url}" in result.stderr
    assert "Traceback" not in result.stderr


def test_not_edgecache(fg: FaultyGlance) -> None:
    """A Glance without the cache API (or any other server) refuses: exit 1, its status shown."""
    fg.stub("GET", "/v2/cache", status=404, body=b'{"error": {"message": "no cache here"}}')
    result = edgecache_cli(fg.url, "list")
    assert result.returncode == 1
    assert "404" in result.stderr and "no cache here" in result.stderr
