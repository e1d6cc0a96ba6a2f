"""Fixtures shared by every test directory."""

from __future__ import annotations

from tests.support.faultyglance import faulty_glance, faulty_glance_thread

__all__ = ["faulty_glance", "faulty_glance_thread"]
