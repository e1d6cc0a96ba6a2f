"""Fixtures shared by every test directory, and the tiers the directories form.

Fast tier (``pytest -m "not slow"``, ``./scripts/test --fast``): ``unit``,
``contract`` and ``functional``, in-process with fakes, no real Glance, Swift or
daemon process. Every other directory starts real systems and is marked
``slow`` here, by where it lives, so a new test file cannot forget its marker.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.disk_images import disk_images
from tests.support.faultyglance import faulty_glance, faulty_glance_thread

__all__ = ["disk_images", "faulty_glance", "faulty_glance_thread"]

TESTS = Path(__file__).resolve().parent

#: Directories under tests/ whose tests start real servers or processes.
SLOW_TIERS = frozenset(
    {"process", "service", "operator", "integration", "keystone", "fleet", "stores"}
)


def tier_of(path: Path) -> str | None:
    """The tests/ directory a test file lives in (None outside tests/)."""
    try:
        parts = path.resolve().relative_to(TESTS).parts
    except ValueError:
        return None
    return parts[0] if len(parts) > 1 else None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if tier_of(item.path) in SLOW_TIERS:
            item.add_marker(pytest.mark.slow)
