"""Refused uploads under load, real Glance behind edgecache.

Glance refuses ``PUT /v2/images/{id}/file`` on an active image with 409 before
it reads the body ("Image status transition from active to saving is not
allowed") and uWSGI then drops the connection. Half of 300 requests, 8 at a
time, are such 2 KiB PUTs, the other half metadata GETs: every caller gets
Glance's own answer, exactly as a direct client does, and none a 503.
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from lab.edgecache import EdgecacheProcess
from lab.glance import LocalGlance
from lab.httpclient import request
from lab.units import KiB

if TYPE_CHECKING:
    from tests.integration.conftest import ImageFactory

pytestmark = [pytest.mark.integration]

REQUESTS = 300
CONCURRENCY = 8


def _load(port: int, image_id: str) -> collections.Counter[tuple[str, int | str]]:
    body = os.urandom(2 * KiB)

    def one(i: int) -> tuple[str, int | str]:
        try:
            if i % 2:
                answer = request(port, "PUT", f"/v2/images/{image_id}/file", body=body,
                                 headers={"Content-Type": "application/octet-stream"},
                                 timeout=30)
                return "PUT", answer.status
            return "GET", request(port, "GET", f"/v2/images/{image_id}", timeout=30).status
        except OSError as exc:
            return ("PUT" if i % 2 else "GET"), type(exc).__name__

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return collections.Counter(pool.map(one, range(REQUESTS)))


def test_refused_uploads_get_glances_answer_through_edgecache(
    edgecache: EdgecacheProcess, real_glance: LocalGlance, make_image: ImageFactory
) -> None:
    image = make_image(1000)
    expected = {("GET", 200): REQUESTS // 2, ("PUT", 409): REQUESTS // 2}

    assert dict(_load(real_glance.port, image.id)) == expected  # Glance itself
    assert dict(_load(edgecache.port, image.id)) == expected
