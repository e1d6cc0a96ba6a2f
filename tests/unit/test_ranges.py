"""Range parsing follows Glance (webob): 400 for several ranges, 416 for the rest."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecache.api.ranges import (
    BadRange,
    ByteRange,
    UnsatisfiableRange,
    parse_content_range,
    parse_range,
    requested_range,
)

SIZE = 1000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-0", ByteRange(0, 1)),
        ("bytes=0-999", ByteRange(0, 1000)),
        ("bytes=10-", ByteRange(10, 1000)),
        ("bytes=990-5000", ByteRange(990, 1000)),
        ("bytes=-10", ByteRange(990, 1000)),
        # webob: a suffix not smaller than the size starts at 0
        ("bytes=-1000", ByteRange(0, 1000)),
        ("bytes=-5000", ByteRange(0, 1000)),
        ("BYTES = 5 - 6", ByteRange(5, 7)),
    ],
)
def test_single_ranges(header: str, expected: ByteRange) -> None:
    assert parse_range(header, SIZE) == expected


@pytest.mark.parametrize(
    "header", ["bytes=1000-", "bytes=5000-6000", "bytes=5-4", "bytes=-0", "bytes=-", "items=0-1",
               "garbage", "bytes=a-b", ""],
)
def test_unsatisfiable(header: str) -> None:
    with pytest.raises(UnsatisfiableRange):
        parse_range(header, SIZE)


def test_several_ranges_are_a_bad_request() -> None:
    with pytest.raises(BadRange):
        parse_range("bytes=0-1,5-6", SIZE)


def test_content_range_request_header_is_a_range() -> None:
    assert parse_content_range("bytes 10-19/1000", SIZE) == ByteRange(10, 20)
    assert parse_content_range("bytes 10-19/*", SIZE) == ByteRange(10, 20)
    with pytest.raises(UnsatisfiableRange):
        parse_content_range("bytes 2000-2001/*", SIZE)


def test_range_header_wins_over_content_range() -> None:
    assert requested_range("bytes=1-1", "bytes 5-6/*", SIZE) == ByteRange(1, 2)
    assert requested_range(None, None, SIZE) is None


def test_content_range_response_header() -> None:
    assert ByteRange(0, 10).content_range(SIZE) == "bytes 0-9/1000"


@given(header=st.text(max_size=40), size=st.integers(min_value=0, max_value=10**12))
def test_any_input_is_a_range_or_a_client_error(header: str, size: int) -> None:
    try:
        byte_range = parse_range(header, size)
    except (BadRange, UnsatisfiableRange):
        return
    assert 0 <= byte_range.start < byte_range.stop <= size


@given(
    start=st.integers(min_value=0, max_value=2000),
    last=st.integers(min_value=0, max_value=2000),
)
def test_explicit_ranges_are_clamped_to_the_image(start: int, last: int) -> None:
    try:
        byte_range = parse_range(f"bytes={start}-{last}", SIZE)
    except UnsatisfiableRange:
        assert start >= SIZE or last < start
        return
    assert byte_range == ByteRange(start, min(last + 1, SIZE))
