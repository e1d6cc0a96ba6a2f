"""The shared nouns: reading Glance's record, choosing the hash, deciding "same bytes".

:func:`same_bytes` decides whether a cached image may still be served, so each
of its branches (hash equality, size change, the no-hash fallback to
``updated_at``) is pinned here, as is the index row format an upgrade must
still read.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecache.model import Entry, ImageMeta, same_bytes, strongest_hash

DATA = b"image bytes"
SHA512 = hashlib.sha512(DATA).hexdigest()
MD5 = hashlib.md5(DATA, usedforsecurity=False).hexdigest()


def record(**fields: Any) -> dict[str, Any]:
    """A Glance-shaped image record; ``fields`` override its defaults."""
    base: dict[str, Any] = {
        "id": "5b1c1c6e-0d5a-4a4e-9d1e-6f8b8f2f7a11",
        "status": "active",
        "size": len(DATA),
        "checksum": MD5,
        "os_hash_algo": "sha512",
        "os_hash_value": SHA512,
        "updated_at": "2026-01-01T00:00:00Z",
        "name": "cirros",
        "visibility": "public",
    }
    base.update(fields)
    return base


def meta(**fields: Any) -> ImageMeta:
    return ImageMeta.from_glance(record(**fields))


# -- ImageMeta.from_glance ----------------------------------------------------------


def test_from_glance_keeps_the_fields_that_decide_serving() -> None:
    got = meta()
    assert got == ImageMeta(
        id="5b1c1c6e-0d5a-4a4e-9d1e-6f8b8f2f7a11",
        status="active",
        size=len(DATA),
        checksum=MD5,
        os_hash_algo="sha512",
        os_hash_value=SHA512,
        updated_at="2026-01-01T00:00:00Z",
        locations=(),
    )


@pytest.mark.parametrize("size", [None, "11", 11.0, "x"])
def test_a_size_that_is_not_an_integer_is_unknown(size: object) -> None:
    assert meta(size=size).size is None


@pytest.mark.parametrize("field", ["checksum", "os_hash_algo", "os_hash_value", "updated_at"])
@pytest.mark.parametrize("value", [None, "", 5])
def test_empty_or_non_text_fields_are_none(field: str, value: object) -> None:
    assert getattr(meta(**{field: value}), field) is None


def test_a_record_without_status_has_an_empty_status() -> None:
    assert ImageMeta.from_glance({"id": "x"}).status == ""
    assert ImageMeta.from_glance({"id": "x"}).size is None


def test_locations_come_in_glances_order_then_direct_url_once() -> None:
    got = meta(
        locations=[{"url": "swift://a/1"}, {"url": ""}, {"metadata": {}}, {"url": "file:///b"},
                   {"url": "swift://a/1"}],
        direct_url="file:///b",
    )
    assert got.locations == ("swift://a/1", "file:///b")
    assert meta(locations="not a list", direct_url="file:///c").locations == ("file:///c",)


# -- strongest_hash -----------------------------------------------------------------


def test_os_hash_is_preferred_to_md5() -> None:
    assert meta().strongest_hash() == ("sha512", SHA512)


def test_hash_algorithm_and_digest_are_lower_cased() -> None:
    got = meta(os_hash_algo="SHA512", os_hash_value=SHA512.upper(), checksum=MD5.upper())
    assert got.strongest_hash() == ("sha512", SHA512)


@pytest.mark.parametrize(
    "fields",
    [{"os_hash_algo": "no-such-algorithm"}, {"os_hash_value": None}, {"os_hash_algo": None}],
)
def test_md5_is_the_fallback(fields: dict[str, Any]) -> None:
    assert meta(**fields).strongest_hash() == ("md5", MD5)


def test_no_hash_at_all_is_none() -> None:
    assert meta(os_hash_value=None, checksum=None).strongest_hash() is None


def test_an_entry_is_verified_by_the_same_rule() -> None:
    entry = Entry.from_meta(meta(), size=len(DATA), now=1.0)
    assert strongest_hash(entry) == ("sha512", SHA512)


# -- same_bytes ---------------------------------------------------------------------


def test_equal_hashes_are_the_same_bytes_whatever_updated_at_says() -> None:
    assert same_bytes(meta(), meta(updated_at="2026-02-02T00:00:00Z", name="renamed"))


@pytest.mark.parametrize(
    "change",
    [
        {"size": len(DATA) + 1},
        {"os_hash_value": hashlib.sha512(b"other").hexdigest()},
        {"checksum": hashlib.md5(b"other", usedforsecurity=False).hexdigest()},
        {"os_hash_value": None},
        {"checksum": None},
    ],
)
def test_a_changed_size_or_hash_is_different_bytes(change: dict[str, Any]) -> None:
    assert not same_bytes(meta(), meta(**change))


def test_without_any_hash_a_changed_updated_at_is_different_bytes() -> None:
    held = meta(os_hash_value=None, checksum=None)
    assert same_bytes(held, meta(os_hash_value=None, checksum=None))
    assert not same_bytes(held, meta(os_hash_value=None, checksum=None,
                                     updated_at="2026-02-02T00:00:00Z"))


def test_md5_alone_is_enough_to_ignore_updated_at() -> None:
    held = meta(os_hash_value=None)
    assert same_bytes(held, meta(os_hash_value=None, updated_at="2026-02-02T00:00:00Z"))


def test_an_entry_matches_the_record_it_was_made_from() -> None:
    entry = Entry.from_meta(meta(), size=len(DATA), now=5.0)
    assert entry.matches(meta())
    assert not entry.matches(meta(size=len(DATA) - 1))


# -- Entry --------------------------------------------------------------------------


def test_from_meta_stamps_commit_and_access_time() -> None:
    entry = Entry.from_meta(meta(), size=len(DATA), now=123.5)
    assert (entry.image_id, entry.size) == (meta().id, len(DATA))
    assert (entry.committed_at, entry.last_access, entry.hits, entry.pinned) == (
        123.5, 123.5, 0, False)


entries = st.builds(
    Entry,
    image_id=st.uuids().map(str),
    size=st.integers(min_value=0, max_value=1 << 50),
    checksum=st.none() | st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
    os_hash_algo=st.none() | st.sampled_from(["sha256", "sha512"]),
    os_hash_value=st.none() | st.text(alphabet="0123456789abcdef", min_size=1, max_size=128),
    updated_at=st.none() | st.text(max_size=30),
    committed_at=st.floats(allow_nan=False, allow_infinity=False),
    last_access=st.floats(allow_nan=False, allow_infinity=False),
    hits=st.integers(min_value=0),
    pinned=st.booleans(),
    extra=st.dictionaries(st.text(max_size=10), st.integers() | st.text(max_size=10),
                          max_size=3),
)


@given(entries)
def test_an_entry_survives_its_index_record(entry: Entry) -> None:
    assert Entry.from_record(entry.to_record()) == entry


def test_a_record_from_another_version_keeps_what_it_knows() -> None:
    """Rows written by a newer release carry fields this one does not know: ignored."""
    entry = Entry(image_id="x", size=3, hits=2)
    row = {**entry.to_record(), "tier": "ssd"}
    assert Entry.from_record(row) == entry
    assert Entry.from_record({"image_id": "y", "size": 1}) == Entry(image_id="y", size=1)


def test_records_are_plain_data() -> None:
    """The index stores the record as given; it must not share state with the entry."""
    entry = Entry(image_id="x", size=3, extra={"k": 1})
    row = entry.to_record()
    row["extra"]["k"] = 2
    assert entry.extra == {"k": 1}
    assert dataclasses.asdict(entry) == entry.to_record()
