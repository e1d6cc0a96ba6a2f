"""Glance's own cache tools, unchanged, against edgecache in front of a real Glance.

``glance cache-queue|cache-list|cache-delete|cache-clear`` (python-glanceclient)
and the deprecated ``glance-cache-manage`` from the Glance package the tests
install (docs/glance-wire.md, Cache-management API and Legacy cache management).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.edgecache import EdgecacheProcess
from lab.glance import LocalGlance
from lab.polling import wait_until
from lab.units import MiB
from tests.operator.support import (
    ImageFactory,
    cache_manage,
    cache_state,
    cached_ids,
    download,
    file_gets,
    glance_cli,
    operator_daemon,
    queued_ids,
)

#: The slow image's prefetch takes 32 s at this cap: it stays queued while a test looks.
SLOW_RATE = "1M"


@pytest.fixture(scope="module")
def edge(
    real_glance: LocalGlance, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EdgecacheProcess]:
    daemon = operator_daemon(
        tmp_path_factory.mktemp("edge-clients"), [real_glance.url],
        prefetch={"workers": 2, "max_rate": SLOW_RATE},
    )
    with daemon:
        yield daemon


@pytest.fixture(autouse=True)
def empty(edge: EdgecacheProcess) -> Iterator[None]:
    yield
    glance_cli(edge.url, "cache-clear")


def test_glance_cache_queue_list_delete(
    edge: EdgecacheProcess, real_glance: LocalGlance, make_image: ImageFactory
) -> None:
    image = make_image(MiB)
    result = glance_cli(edge.url, "cache-queue", image.id)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    wait_until(lambda: image.id in cached_ids(edge.url), "the queued image to be cached")

    listing = glance_cli(edge.url, "cache-list")
    assert listing.returncode == 0, listing.stderr
    (row,) = [line for line in listing.stdout.splitlines() if image.id in line]
    assert "| cached |" in row
    assert f"| {MiB} " in row

    # The prefetched copy is served, its bytes verify, Glance was read once.
    digest, size, _ = download(edge.url, image.id)
    assert (digest, size) == (image.sha512, image.size)
    assert file_gets(real_glance, image.id) == 1

    result = glance_cli(edge.url, "cache-delete", image.id)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert image.id not in cached_ids(edge.url)

    # An unknown image: glanceclient parses the Glance-shaped 404 and says so.
    unknown = "0fd0ad4f-5a1b-4bb6-9d5b-5c1b1b0e0e0e"
    result = glance_cli(edge.url, "cache-queue", unknown)
    assert f"Image {unknown} not found" in result.stderr


@pytest.mark.parametrize("target", ["cache", "queue", "both"])
def test_glance_cache_clear_targets(
    edge: EdgecacheProcess, make_image: ImageFactory, target: str
) -> None:
    small, slow = make_image(MiB), make_image(32 * MiB)
    assert glance_cli(edge.url, "cache-queue", small.id).returncode == 0
    wait_until(lambda: small.id in cached_ids(edge.url), "the small image to be cached")
    assert glance_cli(edge.url, "cache-queue", slow.id).returncode == 0

    listing = glance_cli(edge.url, "cache-list").stdout
    (row,) = [line for line in listing.splitlines() if slow.id in line]
    assert "| queued |" in row

    result = glance_cli(edge.url, "cache-clear", "--target", target)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert (small.id in cached_ids(edge.url)) is (target == "queue")
    assert (slow.id in queued_ids(edge.url)) is (target == "cache")
    if target != "cache":
        wait_until(lambda: not cache_state(edge.url)["fills"], "the prefetch to stop")


def test_glance_cache_manage(
    edge: EdgecacheProcess, glance_venv: Path, real_glance: LocalGlance, make_image: ImageFactory
) -> None:
    image, slow = make_image(2 * MiB), make_image(32 * MiB)

    result = cache_manage(glance_venv, edge.url, "queue-image", slow.id, "--force")
    assert result.returncode == 0, result.stdout + result.stderr
    result = cache_manage(glance_venv, edge.url, "list-queued")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Found 1 queued images" in result.stdout
    assert slow.id in result.stdout
    result = cache_manage(glance_venv, edge.url, "delete-queued-image", slow.id, "--force")
    assert result.returncode == 0
    assert "No queued images" in cache_manage(glance_venv, edge.url, "list-queued").stdout

    assert "No cached images" in cache_manage(glance_venv, edge.url, "list-cached").stdout
    result = cache_manage(glance_venv, edge.url, "queue-image", image.id, "--force")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_until(lambda: image.id in cached_ids(edge.url), "the queued image to be cached")
    result = cache_manage(glance_venv, edge.url, "list-cached")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Found 1 cached images" in result.stdout
    (row,) = [line for line in result.stdout.splitlines() if image.id in line]
    assert str(2 * MiB) in row
    digest, _, _ = download(edge.url, image.id)
    assert digest == image.sha512
    assert file_gets(real_glance, image.id) == 1

    result = cache_manage(glance_venv, edge.url, "delete-cached-image", image.id, "--force")
    assert result.returncode == 0, result.stdout + result.stderr
    assert image.id not in cached_ids(edge.url)
    result = cache_manage(glance_venv, edge.url, "delete-all-cached-images", "--force")
    assert result.returncode == 0
    result = cache_manage(glance_venv, edge.url, "delete-all-queued-images", "--force")
    assert result.returncode == 0
