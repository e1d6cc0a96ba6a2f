"""Logs: the request id on every line of a request, one access line per request.

Read from the daemon's own output, as journald would get it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from lab.edgecache import EdgecacheProcess
from lab.polling import wait_until
from lab.units import MiB
from tests.service import Download
from tests.support.faultyglance import Fault, FaultyGlance

_ACCESS = re.compile(
    r"\[(?P<rid>[^\]]+)\] (?P<method>[A-Z]+) (?P<path>\S+) status=(?P<status>\d+) "
    r"bytes=(?P<bytes>\d+) duration=(?P<duration>[\d.]+) cache=(?P<cache>\S+) "
    r"route=(?P<route>\S+) remote=(?P<remote>\S+)"
)


@pytest.fixture
def glance() -> Iterator[FaultyGlance]:
    with FaultyGlance() as server:
        yield server


def access_lines(text: str) -> list[re.Match[str]]:
    return [m for line in text.splitlines() if " edgecache.access " in line
            if (m := _ACCESS.search(line)) is not None]


def test_every_line_of_a_request_names_it_and_each_request_gets_an_access_line(
    glance: FaultyGlance, tmp_path: Path
) -> None:
    image = glance.add_image(os.urandom(MiB))
    path = f"/v2/images/{image['id']}/file"
    with EdgecacheProcess(tmp_path / "edgecache", glance_endpoints=[glance.url]) as daemon:
        miss = Download(daemon.url + path, headers={"X-OpenStack-Request-ID": "req-miss-1"})
        assert miss.start().wait().status == 200
        wait_until(lambda: f"committed image {image['id']}" in daemon.log_text(), "commit")
        hit = Download(daemon.url + path, headers={"X-OpenStack-Request-ID": "req-hit-2"})
        assert hit.start().wait().status == 200
        assert requests.get(f"{daemon.url}/healthcheck", timeout=10).status_code == 200
        # An access line is written once the response is out: the client may be first.
        wait_until(
            lambda: {"req-miss-1", "req-hit-2", "/healthcheck"}
            <= {m["rid"] for m in access_lines(daemon.log_text())}
            | {m["path"] for m in access_lines(daemon.log_text())},
            "the access lines",
        )
        log = daemon.log_text()

    # Lines of the miss, the fill it started included, carry its id.
    about_image = [line for line in log.splitlines() if image["id"] in line]
    assert any("committed image" in line for line in about_image)
    for line in about_image:
        assert "[req-miss-1]" in line or "[req-hit-2]" in line, line
    assert any("[req-miss-1]" in line and "committed image" in line for line in about_image)
    # Lines outside any request say so.
    (listening,) = [line for line in log.splitlines() if "edgecache listening on" in line]
    assert "[-]" in listening

    by_id = {m["rid"]: m for m in access_lines(log)}
    assert by_id["req-miss-1"]["cache"] == "miss"
    assert by_id["req-hit-2"]["cache"] == "hit"
    for rid in ("req-miss-1", "req-hit-2"):
        access = by_id[rid]
        assert (access["method"], access["path"], access["status"]) == ("GET", path, "200")
        assert access["route"] == "image_data"
        assert int(access["bytes"]) >= MiB  # sendfile bytes are counted too
        assert float(access["duration"]) >= 0
        assert access["remote"] == "127.0.0.1"
    (health,) = [m for m in access_lines(log) if m["path"] == "/healthcheck"]
    assert (health["status"], health["cache"], health["route"]) == ("200", "-", "healthcheck")
    assert health["rid"].startswith("req-")


def test_debug_and_log_file(glance: FaultyGlance, tmp_path: Path) -> None:
    image = glance.add_image(os.urandom(MiB))
    log_file = tmp_path / "edgecache-file.log"
    options = {"DEFAULT": {"debug": "true", "log_file": str(log_file)}}
    with EdgecacheProcess(
        tmp_path / "edgecache", glance_endpoints=[glance.url], options=options
    ) as daemon:
        got = Download(f"{daemon.url}/v2/images/{image['id']}/file").start().wait()
        assert got.status == 200
        wait_until(lambda: " DEBUG " in log_file.read_text(), "a DEBUG line in log_file")
        text = log_file.read_text()
        assert f"image {image['id']}: miss, started its fill" in text
        assert "edgecache listening on" in text
        assert "edgecache listening on" not in daemon.log_text()  # not on stderr too


def test_a_client_that_leaves_mid_download_still_gets_an_access_line(
    glance: FaultyGlance, tmp_path: Path
) -> None:
    """aiohttp writes no access line for a cancelled handler; edgecache does (499)."""
    image = glance.add_image(
        os.urandom(4 * MiB), fault=Fault(trickle_chunk=256 * 1024, trickle_delay=0.1)
    )
    with EdgecacheProcess(tmp_path / "edgecache", glance_endpoints=[glance.url]) as daemon:
        with requests.get(
            f"{daemon.url}/v2/images/{image['id']}/file", stream=True, timeout=10,
            headers={"X-OpenStack-Request-ID": "req-gone-3"},
        ) as response:
            assert response.status_code == 200
            assert next(response.iter_content(64 * 1024))
        # The connection is closed here, long before the image is complete.
        wait_until(lambda: "req-gone-3" in {m["rid"] for m in access_lines(daemon.log_text())},
                 "the access line of the client that left")
        (line,) = [m for m in access_lines(daemon.log_text()) if m["rid"] == "req-gone-3"]
    assert (line["status"], line["cache"], line["route"]) == ("499", "miss", "image_data")
    assert 0 < int(line["bytes"]) < 4 * MiB
