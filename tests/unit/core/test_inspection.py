"""The format inspector's verdicts on real images (qemu-img, genisoimage), fed as a fill
feeds them: in chunks, in order, until it decides."""

from __future__ import annotations

import pytest

from edgecache.core.inspection import Inspection, Mode, SafetyPolicy, Verdict
from lab.units import KiB
from tests.support.disk_images import DiskImage

CHUNK = 64 * KiB


def inspect(image: DiskImage, policy: SafetyPolicy | None = None,
            disk_format: str | None = None) -> tuple[Verdict, int]:
    """The verdict on ``image``, and how many bytes it took."""
    inspection = Inspection("an-image", disk_format or image.disk_format,
                            policy or SafetyPolicy())
    for start in range(0, len(image.data), CHUNK):
        verdict = inspection.feed(memoryview(image.data)[start:start + CHUNK])
        if verdict is not None:
            return verdict, inspection.inspected
    return inspection.conclude(), inspection.inspected


@pytest.mark.parametrize(("name", "detected"), [
    ("clean-qcow2", "qcow2"), ("raw", "raw"), ("vmdk-stream", "vmdk"), ("iso-as-raw", "iso"),
])
def test_safe_images_pass_with_their_format(
    disk_images: dict[str, DiskImage], name: str, detected: str
) -> None:
    verdict, _ = inspect(disk_images[name])
    assert verdict == Verdict(detected)


@pytest.mark.parametrize(("name", "reason"), [
    ("backing-file", "backing_file"),
    ("data-file", "data_file"),
    ("raw-as-qcow2", "disk_format_mismatch"),
    ("qcow2-as-raw", "disk_format_mismatch"),
    ("vmdk-flat", "vmdk_type"),
])
def test_unsafe_images_are_refused_with_their_reason(
    disk_images: dict[str, DiskImage], name: str, reason: str
) -> None:
    verdict, _ = inspect(disk_images[name])
    assert not verdict.safe
    assert verdict.reason == reason, verdict


def test_most_verdicts_come_from_the_first_bytes(disk_images: dict[str, DiskImage]) -> None:
    """A 2 MiB raw disk and its qcow2 are judged within their first 512 KiB: the first
    caller's headers wait only for that."""
    for name in ("raw", "clean-qcow2", "qcow2-as-raw"):
        image = disk_images[name]
        _, inspected = inspect(image)
        assert inspected <= 512 * KiB < len(image.data), (name, inspected)


def test_a_disk_format_the_inspector_cannot_read_is_refused_before_any_byte(
    disk_images: dict[str, DiskImage],
) -> None:
    inspection = Inspection("an-image", "ploop", SafetyPolicy())
    assert inspection.verdict is not None and inspection.verdict.reason == "unsupported_disk_format"


def test_ami_formats_are_not_held_to_their_label(disk_images: dict[str, DiskImage]) -> None:
    """As in Nova: an ami/aki/ari record is checked for safety, not for its format."""
    verdict, _ = inspect(disk_images["raw"], disk_format="ami")
    assert verdict == Verdict("raw")
    verdict, _ = inspect(disk_images["backing-file"], disk_format="ami")
    assert verdict.reason == "backing_file"


def test_the_allowed_vmdk_types_narrow_what_passes(disk_images: dict[str, DiskImage]) -> None:
    only_sparse = SafetyPolicy(Mode.ENFORCE, vmdk_allowed_types=("monolithicSparse",))
    verdict, _ = inspect(disk_images["vmdk-stream"], only_sparse)
    assert verdict.reason == "vmdk_type"
    assert "streamoptimized" in verdict.detail
