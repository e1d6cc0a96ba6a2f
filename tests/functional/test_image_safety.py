"""Unsafe or mislabelled disk images are refused at the edge, before a hypervisor opens them.

docs/behaviour.md#image-safety. Real images (qemu-img, genisoimage) behind FaultyGlance:
the unsafe ones answer Glance-shaped 403s naming the reason and the image, before any
body byte, and are never cached; the safe ones pass, verified. ``[image_safety] mode``
``log`` serves and counts, ``off`` inspects nothing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from edgecache.api.cache_api import CACHE_ADMIN_KEY
from edgecache.core import fill as fill_module
from edgecache.core.inspection import Mode, SafetyPolicy
from lab.units import KiB
from tests.functional import Edge, file_path, start_edgecache
from tests.support.disk_images import DiskImage
from tests.support.faultyglance import Fault, FaultyGlance

UNSAFE = {
    "backing-file": "backing_file",
    "data-file": "data_file",
    "raw-as-qcow2": "disk_format_mismatch",
    "qcow2-as-raw": "disk_format_mismatch",
    "vmdk-flat": "vmdk_type",
}
SAFE = ("clean-qcow2", "raw", "vmdk-stream", "iso-as-raw")


async def _edge(aiohttp_client: AiohttpClient, glance: FaultyGlance, root: Path,
                mode: Mode = Mode.ENFORCE) -> Edge:
    return await start_edgecache(aiohttp_client, root, (glance.url,),
                                 image_safety=SafetyPolicy(mode))


def _add(glance: FaultyGlance, image: DiskImage, fault: Fault | None = None) -> str:
    record = glance.add_image(image.data, properties={"disk_format": image.disk_format},
                              fault=fault)
    return str(record["id"])


@pytest.mark.parametrize("name", sorted(UNSAFE))
async def test_an_unsafe_image_is_refused_before_any_byte_and_never_cached(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path,
    disk_images: dict[str, DiskImage], name: str,
) -> None:
    edge = await _edge(aiohttp_client, faulty_glance, tmp_path / "cache")
    image = disk_images[name]
    image_id = _add(faulty_glance, image)
    path = file_path(image_id)

    first, second = await asyncio.gather(edge.fetch(path), edge.fetch(path))
    for got in (first, second):
        assert got.status == 403, (got.status, got.body[:300])
        assert got.headers["Content-Type"].startswith("application/json")
        assert image_id.encode() in got.body and UNSAFE[name].encode() in got.body
        assert image.data[:512] not in got.body
    await edge.settled()
    assert edge.data_files() == {} and edge.incomplete_files() == []
    assert edge.sample("edgecache_image_safety_rejections_total", reason=UNSAFE[name]) == 1

    # Refused for good: the next caller's 403 costs Glance no second data GET.
    again = await edge.fetch(path)
    assert again.status == 403 and UNSAFE[name].encode() in again.body
    assert faulty_glance.count("GET", path) == 1
    assert edge.sample("edgecache_image_safety_rejections_total", reason=UNSAFE[name]) == 1
    detail = await (await edge.client.get("/v2/cache", params={"detail": "1"})).json()
    assert [(r["image_id"], r["reason"]) for r in detail["refused"]] == [(image_id, UNSAFE[name])]


@pytest.mark.parametrize("name", SAFE)
async def test_a_safe_image_passes_verified_and_is_cached_with_its_format(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path,
    disk_images: dict[str, DiskImage], name: str,
) -> None:
    edge = await _edge(aiohttp_client, faulty_glance, tmp_path / "cache")
    image = disk_images[name]
    image_id = _add(faulty_glance, image)
    got = await edge.fetch(file_path(image_id))
    assert (got.status, got.error) == (200, None)
    assert got.body == image.data
    await edge.settled()
    assert edge.data_files() == {image_id: len(image.data)}
    listed = await (await edge.client.get("/v2/cache")).json()
    expected = {"clean-qcow2": "qcow2", "raw": "raw", "vmdk-stream": "vmdk",
                "iso-as-raw": "iso"}[name]
    assert [e["detected_format"] for e in listed["cached_images"]] == [expected]
    assert sum(edge.sample("edgecache_image_safety_rejections_total", reason=reason)
               for reason in set(UNSAFE.values())) == 0


async def test_a_verdict_that_comes_after_the_headers_cuts_the_response(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path,
    disk_images: dict[str, DiskImage], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An image judged only at its end (headers went out after INSPECTION_HOLD bytes):
    the refusal comes with the hash, before the last byte, and the response is cut."""
    monkeypatch.setattr(fill_module, "INSPECTION_HOLD", 64 * KiB)
    edge = await _edge(aiohttp_client, faulty_glance, tmp_path / "cache")
    image = disk_images["backing-file"]  # small: the inspector decides at the end
    image_id = _add(faulty_glance, image, fault=Fault(trickle_chunk=16 * KiB))
    got = await edge.fetch(file_path(image_id))
    assert got.status == 200, "the headers went out before the verdict"
    assert got.broken, "never a clean end"
    assert len(got.body) < len(image.data)
    await edge.settled()
    assert edge.data_files() == {}
    assert edge.sample("edgecache_image_safety_rejections_total", reason="backing_file") == 1


async def test_log_mode_serves_and_counts(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path,
    disk_images: dict[str, DiskImage],
) -> None:
    edge = await _edge(aiohttp_client, faulty_glance, tmp_path / "cache", Mode.LOG)
    image = disk_images["backing-file"]
    image_id = _add(faulty_glance, image)
    got = await edge.fetch(file_path(image_id))
    assert (got.status, got.error, got.body) == (200, None, image.data)
    await edge.settled()
    assert edge.data_files() == {image_id: len(image.data)}
    assert edge.sample("edgecache_image_safety_rejections_total", reason="backing_file") == 1


async def test_off_inspects_nothing(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path,
    disk_images: dict[str, DiskImage],
) -> None:
    edge = await _edge(aiohttp_client, faulty_glance, tmp_path / "cache", Mode.OFF)
    image = disk_images["backing-file"]
    image_id = _add(faulty_glance, image)
    got = await edge.fetch(file_path(image_id))
    assert (got.status, got.body) == (200, image.data)
    await edge.settled()
    listed = await (await edge.client.get("/v2/cache")).json()
    assert [e["detected_format"] for e in listed["cached_images"]] == [None]
    assert edge.sample("edgecache_image_safety_rejections_total", reason="backing_file") == 0


async def test_the_scrubber_refuses_an_unsafe_copy_cached_before_enforce(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path,
    disk_images: dict[str, DiskImage],
) -> None:
    """A qcow2 with a backing file cached while the check was off: once edgecache runs
    with ``enforce``, the scrubber's re-read refuses it, evicts it, and callers get 403."""
    root = tmp_path / "cache"
    image = disk_images["backing-file"]
    image_id = _add(faulty_glance, image)
    before = await _edge(aiohttp_client, faulty_glance, root, Mode.OFF)
    assert (await before.fetch(file_path(image_id))).status == 200
    await before.settled()
    await before.client.close()  # the daemon restarts with the check on

    edge = await _edge(aiohttp_client, faulty_glance, root)
    assert edge.data_files() == {image_id: len(image.data)}
    verdict = await edge.app[CACHE_ADMIN_KEY].scrubber.verify(image_id)
    assert verdict is not None
    assert (verdict.result, verdict.detail.split(":")[0]) == ("unsafe", "backing_file")
    await edge.settled()
    assert edge.data_files() == {}
    got = await edge.fetch(file_path(image_id))
    assert got.status == 403 and b"backing_file" in got.body
    assert faulty_glance.count("GET", file_path(image_id)) == 1, "refused without a refetch"
    assert edge.sample("edgecache_image_safety_rejections_total", reason="backing_file") == 1


async def test_the_scrubber_passes_a_safe_copy(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path,
    disk_images: dict[str, DiskImage],
) -> None:
    edge = await _edge(aiohttp_client, faulty_glance, tmp_path / "cache")
    image_id = _add(faulty_glance, disk_images["clean-qcow2"])
    assert (await edge.fetch(file_path(image_id))).status == 200
    await edge.settled()
    verdict = await edge.app[CACHE_ADMIN_KEY].scrubber.verify(image_id)
    assert verdict is not None and verdict.result == "ok"
    assert image_id in edge.data_files()
