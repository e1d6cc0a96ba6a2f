"""The cache's files on a real filesystem (``tmp_path``): sweep at start, commit, remove.

After a crash the only promise is "every indexed image is whole", so the start
sweep (partials, rows without their file or with the wrong size, files without
a row) is what these pin down, together with the commit that produces rows.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecache.core.diskstore import DiskStore
from edgecache.model import Entry


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DiskStore]:
    disk = DiskStore(tmp_path / "cache")
    assert disk.open() == []
    try:
        yield disk
    finally:
        disk.close()


def commit(
    disk: DiskStore, image_id: str, data: bytes, *, checksum: str | None = None,
    last_access: float = 0.0,
) -> Entry:
    """Write ``data`` through a partial file and commit it, as a fill does."""
    partial, fd = disk.create_partial(image_id)
    try:
        os.write(fd, data)
        entry = Entry(image_id=image_id, size=len(data), checksum=checksum,
                      last_access=last_access)
        disk.commit(partial, fd, entry)
    finally:
        os.close(fd)
    return entry


def reopen(disk: DiskStore) -> list[Entry]:
    disk.close()
    return disk.open()


def test_open_creates_the_layout(store: DiskStore) -> None:
    assert [p.name for p in sorted(store.root.iterdir())] == ["data", "incomplete", "index"]


def test_a_commit_is_a_data_file_and_a_row_that_survive_a_restart(store: DiskStore) -> None:
    entry = commit(store, "img-1", b"x" * 100, checksum="abc", last_access=5.0)
    assert store.data_path("img-1").read_bytes() == b"x" * 100
    assert list(store.incomplete_dir.iterdir()) == []
    assert reopen(store) == [entry]


def test_partials_are_private_and_unique(store: DiskStore) -> None:
    first, fd1 = store.create_partial("img")
    second, fd2 = store.create_partial("img")
    try:
        assert first != second
        assert first.parent == second.parent == store.incomplete_dir
        assert first.stat().st_mode & 0o007 == 0
    finally:
        os.close(fd1)
        os.close(fd2)
    store.discard(first)
    store.discard(first)  # a second discard (after a crash sweep, say) is harmless
    assert list(store.incomplete_dir.iterdir()) == [second]


def test_open_sweeps_partials_of_the_previous_run(store: DiskStore) -> None:
    _, fd = store.create_partial("img-1")
    os.close(fd)
    (store.incomplete_dir / ".probe.dead").write_bytes(b"")
    assert reopen(store) == []
    assert list(store.incomplete_dir.iterdir()) == []


def test_open_drops_rows_whose_file_is_missing(store: DiskStore) -> None:
    kept = commit(store, "kept", b"k" * 10)
    commit(store, "gone", b"g" * 10)
    store.data_path("gone").unlink()
    assert reopen(store) == [kept]
    assert "gone" not in store.index


def test_open_drops_rows_whose_file_has_the_wrong_size(store: DiskStore) -> None:
    """A file truncated (or appended to) behind our back is not the verified image."""
    kept = commit(store, "kept", b"k" * 10)
    commit(store, "short", b"s" * 10)
    commit(store, "long", b"l" * 10)
    with store.data_path("short").open("r+b") as f:
        f.truncate(5)
    with store.data_path("long").open("ab") as f:
        f.write(b"+")
    assert reopen(store) == [kept]
    assert sorted(p.name for p in store.data_dir.iterdir()) == ["kept"]
    assert list(store.index.iterkeys()) == ["kept"]


def test_open_drops_rows_that_are_not_entries(store: DiskStore) -> None:
    kept = commit(store, "kept", b"k")
    store.index.set("junk", "not a record")
    assert reopen(store) == [kept]
    assert "junk" not in store.index


def test_open_removes_files_without_a_row(store: DiskStore) -> None:
    """A crash between rename and index write leaves an orphan: never served, removed."""
    kept = commit(store, "kept", b"k" * 3)
    store.data_path("orphan").write_bytes(b"o" * 3)
    assert reopen(store) == [kept]
    assert not store.data_path("orphan").exists()


def test_remove_drops_row_and_file(store: DiskStore) -> None:
    commit(store, "a", b"a")
    kept = commit(store, "b", b"b")
    store.remove("a")
    assert not store.data_path("a").exists()
    assert "a" not in store.index
    store.remove("a")  # already gone: nothing to do
    assert reopen(store) == [kept]


def test_save_entries_persists_recency_of_indexed_entries_only(store: DiskStore) -> None:
    """An entry evicted between the save being scheduled and run must not come back."""
    entry = commit(store, "a", b"a" * 4, last_access=1.0)
    entry.last_access, entry.hits, entry.pinned = 99.0, 7, True
    evicted = Entry(image_id="evicted", size=1)
    store.save_entries([entry, evicted])
    (loaded,) = reopen(store)
    assert (loaded.last_access, loaded.hits, loaded.pinned) == (99.0, 7, True)
    assert "evicted" not in store.index


def test_the_index_is_unusable_before_open(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="before open"):
        DiskStore(tmp_path).index  # noqa: B018


def test_probe_write_succeeds_on_a_writable_cache(store: DiskStore) -> None:
    assert store.probe_write() is None
    assert store.usable()
    assert list(store.incomplete_dir.iterdir()) == []


def test_probe_write_reports_a_vanished_directory(store: DiskStore) -> None:
    """A removed (or unmounted) directory fails for root too, unlike permission bits."""
    shutil.rmtree(store.incomplete_dir)
    reason = store.probe_write()
    assert reason is not None
    assert str(store.incomplete_dir) in reason and "No such file" in reason
    assert not store.usable()


def test_probe_write_reports_a_read_only_directory() -> None:
    """Permission bits that forbid creating files (root ignores them, so as root the probe
    runs in a child that has dropped to an unprivileged user)."""
    # a root of our own outside pytest's private temp tree, so an unprivileged child
    # can reach it without loosening any directory but ours
    root = Path(tempfile.mkdtemp(prefix="edgecache-ro-"))
    try:
        root.chmod(0o755)
        store = DiskStore(root)
        store.open()
        store.incomplete_dir.chmod(0o555)
        reason = _probe_unprivileged(store) if os.geteuid() == 0 else store.probe_write()
        assert reason is not None and "Permission denied" in reason
        store.close()
    finally:
        shutil.rmtree(root)


def _probe_unprivileged(store: DiskStore) -> str | None:
    """``store.probe_write()`` in a forked child running as ``nobody``."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, probe, report, exit without cleanup
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, (store.probe_write() or "").encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    return answer or None
