"""The cache's files: where they live, how a fill becomes a committed image.

Layout under the cache root::

    data/<image id>            committed, verified images (the served namespace)
    incomplete/<id>.<random>   fills in progress; never served from the index
    index/                     the durable index (diskcache, sqlite underneath)

Commit is fsync(file) -> rename into data/ -> fsync(data/) -> index row, so after
a crash every indexed image is whole, and a file without a row is removed at the
next start. Every method blocks: the cache calls it in its disk threads.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

import diskcache

from edgecache.model import Entry


class DiskStore:
    """The on-disk half of the cache."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.data_dir = self.root / "data"
        self.incomplete_dir = self.root / "incomplete"
        self.index_dir = self.root / "index"
        self._index: diskcache.Cache | None = None

    # -- start and stop -------------------------------------------------------------

    def open(self) -> list[Entry]:
        """Create the layout, sweep leftovers, and return the entries that are whole.

        Partial files from a previous run are removed (a fill never resumes into
        a file it cannot vouch for); index rows whose file is missing or has the
        wrong size are dropped; files without a row are removed.
        """
        for directory in (self.data_dir, self.incomplete_dir, self.index_dir):
            directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.incomplete_dir.iterdir():
            _unlink(leftover)
        self._index = diskcache.Cache(str(self.index_dir), eviction_policy="none")
        on_disk = {p.name: p.stat().st_size for p in self.data_dir.iterdir() if p.is_file()}
        entries: list[Entry] = []
        for key in list(self._index.iterkeys()):
            record = self._index.get(key)
            entry = Entry.from_record(record) if isinstance(record, dict) else None
            if entry is None or on_disk.get(entry.image_id) != entry.size:
                self._index.delete(key)
                continue
            entries.append(entry)
        indexed = {entry.image_id for entry in entries}
        for name in on_disk.keys() - indexed:
            _unlink(self.data_dir / name)
        return entries

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None

    @property
    def index(self) -> diskcache.Cache:
        if self._index is None:
            raise RuntimeError("DiskStore used before open()")
        return self._index

    # -- fills ----------------------------------------------------------------------

    def create_partial(self, image_id: str) -> tuple[Path, int]:
        """A new, private partial file for a fill, open for writing and reading.

        Readers of the fill reopen this descriptor (``/proc/self/fd``), so they
        keep reading the same inode after the rename and even after an eviction
        unlinks it.
        """
        path = self.incomplete_dir / f"{image_id}.{secrets.token_hex(6)}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        return path, fd

    def commit(self, partial: Path, fd: int, entry: Entry) -> None:
        """Make a verified partial file the committed image ``entry`` describes."""
        os.fsync(fd)
        final = self.data_path(entry.image_id)
        os.rename(partial, final)
        _fsync_dir(self.data_dir)
        self.index.set(entry.image_id, entry.to_record())

    def discard(self, partial: Path) -> None:
        _unlink(partial)

    # -- committed images -----------------------------------------------------------

    def data_path(self, image_id: str) -> Path:
        return self.data_dir / image_id

    def remove(self, image_id: str) -> None:
        """Drop the index row first, then the file (a crash in between leaves an orphan
        file, which the next start removes)."""
        self.index.delete(image_id)
        _unlink(self.data_path(image_id))

    def save_entries(self, entries: list[Entry]) -> None:
        """Persist access times and hit counts (written lazily, not on every hit)."""
        for entry in entries:
            if entry.image_id in self.index:
                self.index.set(entry.image_id, entry.to_record())

    def usable(self) -> bool:
        """Whether new files can be created in the cache (disk not read-only or gone)."""
        return os.access(self.incomplete_dir, os.W_OK | os.X_OK)

    def probe_write(self) -> str | None:
        """Create and remove a file in ``incomplete/``: None if that works, else why not.

        ``os.access`` answers from permission bits; a vanished or remounted
        directory, or a full inode table, only shows when a file is created.
        A probe left by a crash is swept with the other partials at start.
        """
        path = self.incomplete_dir / f".probe.{secrets.token_hex(4)}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            return f"cannot create files in {self.incomplete_dir}: {exc.strerror}"
        os.close(fd)
        _unlink(path)
        return None


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
