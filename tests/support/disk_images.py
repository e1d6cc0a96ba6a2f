"""Real disk images, made by ``qemu-img`` (Debian's qemu-utils) and ``genisoimage``.

The format inspector judges real bytes, so the tests feed it images the tools
operators use would write: never hand-made headers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.units import MiB

#: What ``./scripts/test`` installs for these (Debian package names).
TOOLS = {"qemu-img": "qemu-utils", "genisoimage": "genisoimage"}


@dataclass(frozen=True)
class DiskImage:
    """An image's bytes and the ``disk_format`` its Glance record gives it."""

    name: str
    data: bytes
    disk_format: str


def missing_tools() -> list[str]:
    return [package for tool, package in TOOLS.items() if shutil.which(tool) is None]


def _run(*argv: str | Path) -> None:
    subprocess.run([str(a) for a in argv], check=True, capture_output=True)


def make_images(workdir: Path) -> dict[str, DiskImage]:
    """Every image the safety tests use, by name (see each one's comment)."""
    workdir.mkdir(parents=True, exist_ok=True)
    raw = workdir / "disk.raw"
    raw.write_bytes(os.urandom(2 * MiB))
    made: dict[str, tuple[Path, str]] = {}

    # a qcow2 with data in it, no backing file: safe
    clean = workdir / "clean.qcow2"
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, clean)
    made["clean-qcow2"] = (clean, "qcow2")
    # a qcow2 whose backing file is a host path: a guest would read /etc/passwd
    backing = workdir / "backing.qcow2"
    _run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw",
         backing, "16M")
    made["backing-file"] = (backing, "qcow2")
    # a qcow2 whose guest data lives in an external host file
    data_file = workdir / "datafile.qcow2"
    _run("qemu-img", "create", "-q", "-f", "qcow2",
         "-o", f"data_file={workdir / 'external.data'}", data_file, "16M")
    made["data-file"] = (data_file, "qcow2")
    made["raw-as-qcow2"] = (raw, "qcow2")  # raw bytes labelled qcow2
    made["qcow2-as-raw"] = (clean, "raw")  # a qcow2 labelled raw: Nova would boot it as raw
    made["raw"] = (raw, "raw")
    # a VMDK whose descriptor names a flat extent file on the host
    flat = workdir / "flat.vmdk"
    _run("qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", flat, "4M")
    made["vmdk-flat"] = (flat, "vmdk")
    stream = workdir / "stream.vmdk"
    _run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized",
         raw, stream)
    made["vmdk-stream"] = (stream, "vmdk")
    # an ISO labelled raw: Nova accepts it, and so must we
    content = workdir / "iso-content"
    content.mkdir(exist_ok=True)
    (content / "README").write_text("edgecache test ISO\n")
    iso = workdir / "cd.iso"
    _run("genisoimage", "-quiet", "-o", iso, content)
    made["iso-as-raw"] = (iso, "raw")
    return {
        name: DiskImage(name, path.read_bytes(), disk_format)
        for name, (path, disk_format) in made.items()
    }


@pytest.fixture(scope="session")
def disk_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DiskImage]:
    """The images of :func:`make_images`, made once per test run."""
    missing = missing_tools()
    if missing:
        pytest.fail(f"the image-safety tests need {', '.join(missing)} (Debian packages; "
                    "./scripts/test installs them)")
    return make_images(tmp_path_factory.mktemp("disk-images"))
