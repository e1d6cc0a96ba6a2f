"""A small tmpfs for a cache directory: a real full disk, a real read-only one.

Mounting needs root (CI runs the suites as root). Each helper undoes what it did
by the mount point, never by a broad name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


@contextlib.contextmanager
def tmpfs(root: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted on ``root`` (created), unmounted at the end."""
    assert os.geteuid() == 0, "mounting a tmpfs needs root (CI runs the suite as root)"
    root.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(root))
    try:
        yield root
    finally:
        # lazily: a descriptor sqlite keeps a moment longer must not fail the test
        _run("umount", "--lazy", str(root))


def fill_up(root: Path, *, leave: int = 0) -> Path:
    """Write a file until the file system has ``leave`` bytes free (0: ENOSPC), as another
    program taking the space would."""
    filler = root / "filler"
    chunk = b"\0" * (64 * 1024)
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                st = os.statvfs(root)
                room = st.f_bavail * st.f_frsize - leave
                if room <= 0:
                    break
                out.write(chunk[:room])
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@contextlib.contextmanager
def read_only(root: Path) -> Iterator[Path]:
    """``root`` read-only from now on (a read-only bind mount over it), writable again at the
    end. Descriptors already open for writing keep working, as after a remount that
    waited for no writer: new files cannot be created."""
    _run("mount", "--bind", str(root), str(root))
    try:
        _run("mount", "-o", "remount,bind,ro", str(root))
        yield root
    finally:
        # lazily: a descriptor the server closes in a thread after its response ended
        # (a hit's, a sender's) keeps the read-only mount a moment longer
        _run("umount", "--lazy", str(root))
