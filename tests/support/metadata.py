"""A scripted Glance metadata source for unit tests of the rules built on its answers."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from edgecache.errors import UpstreamError, UpstreamRefused
from edgecache.model import ImageMeta


def image(image_id: str = "img-1", *, status: str = "active", size: int = 1000) -> ImageMeta:
    """An image record as Glance would describe it."""
    return ImageMeta(
        id=image_id,
        status=status,
        size=size,
        checksum=None,
        os_hash_algo="sha512",
        os_hash_value="ab" * 64,
        updated_at="2026-01-01T00:00:00Z",
    )


def refusal(status: int) -> UpstreamRefused:
    return UpstreamRefused(status, b"", {})


@dataclass
class ScriptedGlance:
    """Answers ``image_metadata`` from :attr:`answers` and records every call.

    ``answers`` maps an image id to what Glance says to everyone: an ImageMeta, or
    an exception to raise. ``by_token`` overrides it for one ``X-Auth-Token``
    (None: a call without a token). While ``gate`` is set to an unset event,
    calls wait on it, so a test can hold several lookups in flight.
    """

    answers: dict[str, ImageMeta | Exception] = field(default_factory=dict)
    by_token: dict[tuple[str, str | None], ImageMeta | Exception] = field(default_factory=dict)
    gate: asyncio.Event | None = None
    calls: list[tuple[str, str | None]] = field(default_factory=list)

    async def image_metadata(self, image_id: str, headers: Mapping[str, str]) -> ImageMeta:
        token = headers.get("x-auth-token")
        self.calls.append((image_id, token))
        if self.gate is not None:
            await self.gate.wait()
        answer = self.by_token.get((image_id, token), self.answers.get(image_id))
        if answer is None:
            raise UpstreamError(f"no answer scripted for {image_id}")
        if isinstance(answer, Exception):
            raise answer
        return answer

    def count(self, image_id: str, token: str | None = None) -> int:
        return sum(1 for call in self.calls if call == (image_id, token))
