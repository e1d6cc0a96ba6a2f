"""Byte units for sizes in the lab, the tests and the benchmarks.

One definition, so that a size written as ``64 * MiB`` means the same thing in
every harness that compares byte counts with edgecache's answers.
"""

from __future__ import annotations

from typing import Final

__all__ = ["GiB", "KiB", "MiB"]

KiB: Final = 1 << 10
MiB: Final = 1 << 20
GiB: Final = 1 << 30
