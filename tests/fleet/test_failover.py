"""Several Glance endpoints, one stopped mid-test (docs/behaviour.md#upstream-faults)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from lab.edgecache import EdgecacheProcess
from lab.units import MiB
from tests.fleet.conftest import ImageFactory, ReplicaFactory, get


def test_downloads_fail_over_to_the_next_glance_and_503_when_none_answers(
    make_image: ImageFactory, glance_replica: ReplicaFactory, tmp_path: Path
) -> None:
    first, second = glance_replica(), glance_replica()
    images = [make_image(3 * MiB + n) for n in range(3)]
    with EdgecacheProcess(
        tmp_path, glance_endpoints=[first.url, second.url], auth_cache_ttl=1
    ) as edge:
        status, body, whole = get(edge.url, images[0].file_path)
        assert (status, whole) == (200, True)
        assert hashlib.sha512(body).hexdigest() == images[0].sha512
        assert first.count_requests("GET", images[0].file_path, at_least=1) == 1
        assert second.count_requests("GET", images[0].file_path) == 0

        first.stop()

        # A cold image: metadata and data both come from the second endpoint.
        status, body, whole = get(edge.url, images[1].file_path)
        assert (status, whole) == (200, True)
        assert hashlib.sha512(body).hexdigest() == images[1].sha512
        assert second.count_requests("GET", images[1].file_path, at_least=1) == 1
        assert second.count_requests("GET", f"/v2/images/{images[1].id}", at_least=1) >= 1
        # A hit is still authorized (by the second endpoint) and served whole.
        status, body, whole = get(edge.url, images[0].file_path)
        assert (status, whole, body) == (200, True, images[0].data)

        second.stop()

        status, body, whole = get(edge.url, images[2].file_path)
        assert status == 503
        assert images[2].data[:64] not in body
        assert not any(edge.data_dir.glob(f"{images[2].id}*"))
