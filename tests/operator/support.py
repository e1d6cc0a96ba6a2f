"""Helpers of the operator tests: daemons with extra options, HTTP, the three CLIs."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.edgecache import EdgecacheProcess, run_cli
from lab.glance import LocalGlance

TOKEN = "noauth"
#: The python-glanceclient CLI installed next to the test interpreter.
GLANCE_CLI = Path(sys.executable).parent / "glance"


@dataclass(frozen=True)
class Image:
    """An active image in the session's Glance and the bytes it holds."""

    id: str
    size: int
    sha512: str
    path: Path


ImageFactory = Callable[[int], Image]


def operator_daemon(
    workdir: Path,
    endpoints: list[str],
    *,
    max_size: str = "1G",
    auth_cache_ttl: int = 1,
    cache: Mapping[str, object] | None = None,
    prefetch: Mapping[str, object] | None = None,
) -> EdgecacheProcess:
    """A (not yet started) noauth daemon with extra ``[cache]`` and ``[prefetch]`` options."""
    options = {
        "cache": {key: str(value) for key, value in (cache or {}).items()},
        "prefetch": {key: str(value) for key, value in (prefetch or {}).items()},
    }
    return EdgecacheProcess(workdir, glance_endpoints=endpoints, max_size=max_size,
                  auth_cache_ttl=auth_cache_ttl, stall_time=600, options=options)


# -- talking to edgecache ---------------------------------------------------------------


def request(
    url: str, method: str, path: str, *, headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, headers=dict(headers or {}))
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def cache_state(url: str) -> dict[str, Any]:
    status, _, body = request(url, "GET", "/v2/cache?detail=1")
    assert status == 200, body
    state: dict[str, Any] = json.loads(body)
    return state


def cached_ids(url: str) -> set[str]:
    return {entry["image_id"] for entry in cache_state(url)["cached_images"]}


def queued_ids(url: str) -> list[str]:
    queued: list[str] = cache_state(url)["queued_images"]
    return queued


def download(url: str, image_id: str, timeout: float = 120.0) -> tuple[str, int, float]:
    """GET the image through edgecache: (sha512 hex, bytes, seconds)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    started = time.monotonic()
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", f"/v2/images/{image_id}/file", headers={"X-Auth-Token": TOKEN})
        response = conn.getresponse()
        assert response.status == 200, response.read()[:500]
        digest = hashlib.sha512()
        count = 0
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            count += len(chunk)
        return digest.hexdigest(), count, time.monotonic() - started
    finally:
        conn.close()


def file_gets(glance: LocalGlance, image_id: str, at_least: int | None = None) -> int:
    """How many ``GET /v2/images/{id}/file`` Glance has served."""
    return glance.count_requests("GET", f"/v2/images/{image_id}/file", at_least=at_least)


def _client_env() -> dict[str, str]:
    """No OS_* variables: the clients must use exactly the URL and token given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.pop("EDGECACHE_URL", None)
    return env


def glance_cli(
    url: str, *args: str, token: str = TOKEN, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """python-glanceclient's own ``glance`` command, pointed at edgecache."""
    return subprocess.run(
        [str(GLANCE_CLI), "--os-image-url", url, "--os-auth-token", token, *args],
        capture_output=True, text=True, timeout=timeout, env=_client_env(), check=False,
        stdin=subprocess.DEVNULL,
    )


def cache_manage(
    venv: Path, url: str, *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``glance-cache-manage`` from the Glance package, pointed at edgecache."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return subprocess.run(
        # A token skips its Keystone login (it builds an auth URL even when none is given).
        [str(venv / "bin" / "glance-cache-manage"), "--host", host, "--port", port,
         "--os-auth-token", TOKEN, *args],
        capture_output=True, text=True, timeout=timeout, env=_client_env(), check=False,
        stdin=subprocess.DEVNULL,
    )


def edgecache_cli(url: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``edgecache cache --url URL ARGS``."""
    return run_cli(["cache", "--url", url, *args], timeout=timeout)
