"""What the store contract suite needs from each backend it runs against."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgecache.upstream.stores import StoreBackend


@dataclass(frozen=True)
class StoreUnderTest:
    """A backend and how to place an object where it reads."""

    backend: StoreBackend
    #: store ``data`` under ``name``; the URL the backend reads it at
    put: Callable[[str, bytes], str]
    #: a URL of the backend's scheme naming no object
    missing: str
