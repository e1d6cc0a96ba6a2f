"""Range parsing follows Glance (webob): 400 for several ranges, 416 for the rest."""

import pytest
from hypothesis import example, given
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


# -- properties: every input is a range or a client error, and ranges mean what they say

_SIZES = st.integers(min_value=0, max_value=2**63)
_DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=5000)
_SPACE = st.text(alphabet=" \t", max_size=3)


@st.composite
def _spelled_range(draw: st.DrawFn) -> tuple[str, str, str]:
    """``bytes=first-last`` with random case and spacing; (header, first, last)."""
    unit = "".join(draw(st.sampled_from([c, c.upper()])) for c in "bytes")
    first = draw(st.one_of(st.just(""), _DIGITS))
    last = draw(st.one_of(st.just(""), _DIGITS))
    space = [draw(_SPACE) for _ in range(5)]
    header = f"{space[0]}{unit}{space[1]}={space[2]}{first}{space[3]}-{space[4]}{last}"
    return header, first, last


@given(header=st.text(max_size=300), size=_SIZES)
def test_any_text_is_a_range_or_a_client_error(header: str, size: int) -> None:
    for parse in (parse_range, parse_content_range):
        try:
            byte_range = parse(header, size)
        except (BadRange, UnsatisfiableRange):
            continue
        assert 0 <= byte_range.start < byte_range.stop <= size


@given(spelled=_spelled_range(), size=_SIZES)
@example(spelled=("bytes=" + "9" * 5000 + "-", "9" * 5000, ""), size=10)  # int() refuses 4300+
@example(spelled=("bytes=0-" + "9" * 5000, "0", "9" * 5000), size=10)
def test_spelling_does_not_matter_and_huge_numbers_are_safe(
    spelled: tuple[str, str, str], size: int
) -> None:
    header, first, last = spelled
    canonical = f"bytes={first}-{last}"
    try:
        expected: ByteRange | type[Exception] = parse_range(canonical, size)
    except UnsatisfiableRange:
        expected = UnsatisfiableRange
    try:
        got: ByteRange | type[Exception] = parse_range(header, size)
    except UnsatisfiableRange:
        got = UnsatisfiableRange
    assert got == expected
    if isinstance(got, ByteRange):
        # What we answer in Content-Range names exactly the bytes we send.
        assert parse_content_range(f"bytes {got.start}-{got.stop - 1}/{size}", size) == got


@given(suffix=st.integers(min_value=1, max_value=10**40), size=st.integers(1, 10**12))
def test_suffix_ranges_are_the_last_bytes(suffix: int, size: int) -> None:
    byte_range = parse_range(f"bytes=-{suffix}", size)
    assert byte_range.stop == size
    assert byte_range.length == min(suffix, size)


@given(before=st.text(max_size=30), after=st.text(max_size=30), size=_SIZES)
def test_a_comma_is_always_a_bad_request(before: str, after: str, size: int) -> None:
    with pytest.raises(BadRange):
        parse_range(f"{before},{after}", size)


@given(digit=st.characters(categories=["Nd"]).filter(lambda c: not "0" <= c <= "9"))
def test_only_ascii_digits_count(digit: str) -> None:
    """RFC 9110 DIGIT is 0-9; int() alone would read '٣' as 3."""
    with pytest.raises(UnsatisfiableRange):
        parse_range(f"bytes={digit}-", SIZE)
    with pytest.raises(UnsatisfiableRange):
        parse_content_range(f"bytes {digit}-{digit}/*", SIZE)


@given(range_header=st.one_of(st.none(), st.text(max_size=40)),
       content_range=st.one_of(st.none(), st.text(max_size=40)))
def test_requested_range_prefers_range(range_header: str | None,
                                       content_range: str | None) -> None:
    def outcome(call: object) -> object:
        try:
            return call() if callable(call) else call
        except (BadRange, UnsatisfiableRange) as exc:
            return type(exc)

    got = outcome(lambda: requested_range(range_header, content_range, SIZE))
    if range_header is not None:
        assert got == outcome(lambda: parse_range(range_header, SIZE))
    elif content_range is not None:
        assert got == outcome(lambda: parse_content_range(content_range, SIZE))
    else:
        assert got is None
