"""Single byte ranges, with Glance's (webob's) answers to every odd input.

Glance answers a multi-range with 400 and anything unparsable, or starting at or
past the end, with 416 (glance/common/wsgi.py). The legacy *request*
``Content-Range`` header is honoured as a range too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# re.ASCII: RFC 9110's DIGIT is 0-9 only (\d would take '٣' and int() would read it).
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE | re.ASCII)
_CONTENT_RANGE = re.compile(
    r"^\s*bytes\s+(\d+)\s*-\s*(\d+)\s*/\s*(\d+|\*)\s*$", re.IGNORECASE | re.ASCII
)


#: Digits past which a number exceeds any image (and int() refuses past 4300 digits).
_MAX_DIGITS = 30


def _number(digits: str) -> int:
    """The value of a run of ASCII digits, capped far beyond any image size."""
    return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


class BadRange(ValueError):
    """Several ranges in one request: Glance answers 400."""


class UnsatisfiableRange(ValueError):
    """A range that cannot be read from this image: 416."""


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``start`` up to, not including, ``stop``."""

    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{size}"


def requested_range(
    range_header: str | None, content_range_header: str | None, size: int
) -> ByteRange | None:
    """The range a request asks of an image of ``size`` bytes, or None for all of it."""
    if range_header is not None:
        return parse_range(range_header, size)
    if content_range_header is not None:
        return parse_content_range(content_range_header, size)
    return None


def parse_range(header: str, size: int) -> ByteRange:
    if "," in header:
        raise BadRange("multiple ranges are not supported")
    match = _RANGE.match(header)
    if match is None:
        raise UnsatisfiableRange(f"unparsable Range {header[:80]!r}")
    first, last = match.groups()
    if not first and not last:
        raise UnsatisfiableRange("empty range")
    if not first:
        # A suffix range 'bytes=-N' asks for the last N bytes; webob honours it only
        # when N is smaller than the image, and otherwise starts at 0.
        suffix = _number(last)
        if suffix == 0:
            raise UnsatisfiableRange("zero-length suffix range")
        start = size - suffix if suffix < size else 0
        stop = size
    else:
        start = _number(first)
        stop = _number(last) + 1 if last else size
        if last and stop <= start:
            raise UnsatisfiableRange("range ends before it starts")
        stop = min(stop, size)
    if start >= size:
        raise UnsatisfiableRange(f"range starts at or past the image's {size} bytes")
    return ByteRange(start, stop)


def parse_content_range(header: str, size: int) -> ByteRange:
    match = _CONTENT_RANGE.match(header)
    if match is None:
        raise UnsatisfiableRange(f"unparsable Content-Range {header[:80]!r}")
    start, last = _number(match.group(1)), _number(match.group(2))
    if last < start or start >= size:
        raise UnsatisfiableRange("Content-Range outside the image")
    return ByteRange(start, min(last + 1, size))
