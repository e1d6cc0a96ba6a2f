"""DeletionCheck: which 404s purge a cached copy, and how often Glance is asked, on a fake clock."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from edgecache.access.grants import MetadataCache
from edgecache.access.purge import DeletionCheck
from edgecache.core.cache import ImageCache
from edgecache.errors import UpstreamError
from edgecache.upstream.service_auth import NoCredentials
from tests.support.clock import FakeClock, settle
from tests.support.metadata import ScriptedGlance, image, refusal

INTERVAL = 10.0
OWNER = {"x-auth-token": "tok-a"}


class CachedCopies:
    """The two things DeletionCheck reads of the cache, and what it evicted."""

    def __init__(self, *image_ids: str) -> None:
        self.index = set(image_ids)
        self.fills: dict[str, object] = {}
        self.evicted: list[str] = []

    def holds(self, image_id: str) -> bool:
        return image_id in self.index or image_id in self.fills

    def evict_soon(self, image_id: str) -> None:
        self.index.discard(image_id)
        self.evicted.append(image_id)


def _check(
    copies: CachedCopies, glance: ScriptedGlance, clock: FakeClock
) -> tuple[DeletionCheck, MetadataCache]:
    metadata = MetadataCache(glance, ttl=60.0, clock=clock)
    check = DeletionCheck(
        cast(ImageCache, copies), metadata, glance, NoCredentials(),
        min_interval=INTERVAL, clock=clock,
    )
    return check, metadata


async def test_an_admins_404_purges_at_once_and_forgets_the_answers() -> None:
    clock = FakeClock()
    copies = CachedCopies("img-1")
    glance = ScriptedGlance(answers={"img-1": image("img-1")})
    check, metadata = _check(copies, glance, clock)
    await metadata.get("img-1", OWNER)

    check.not_found("img-1", caller_is_admin=True)

    assert copies.evicted == ["img-1"]
    assert glance.count("img-1") == 0, "an admin's 404 needs no check"
    await metadata.get("img-1", OWNER)
    assert glance.count("img-1", "tok-a") == 2, "the owner's reused answer was forgotten"


async def test_a_strangers_404s_start_one_check_per_interval() -> None:
    clock = FakeClock()
    copies = CachedCopies("img-1")
    glance = ScriptedGlance(answers={"img-1": image("img-1")})  # it exists: Glance says 200
    check, _ = _check(copies, glance, clock)

    for _ in range(5):
        check.not_found("img-1", caller_is_admin=False)
    await settle()
    assert glance.count("img-1") == 1, "one check however many 404s"
    assert copies.evicted == []

    await clock.advance(INTERVAL - 0.001)
    check.not_found("img-1", caller_is_admin=False)
    await settle()
    assert glance.count("img-1") == 1, "no second check within the interval"

    await clock.advance(0.002)
    check.not_found("img-1", caller_is_admin=False)
    await settle()
    assert glance.count("img-1") == 2, "a second check once it has passed"
    assert copies.evicted == []
    await check.close()


async def test_a_404_to_its_own_check_purges() -> None:
    clock = FakeClock()
    copies = CachedCopies("img-1")
    glance = ScriptedGlance(answers={"img-1": refusal(404)})
    check, _ = _check(copies, glance, clock)
    check.not_found("img-1", caller_is_admin=False)
    await settle()
    assert copies.evicted == ["img-1"]


@pytest.mark.parametrize(
    "answer", [refusal(401), refusal(403), UpstreamError("no Glance answers")],
    ids=["401", "403", "unreachable"],
)
async def test_a_check_that_cannot_see_decides_nothing(answer: Exception) -> None:
    clock = FakeClock()
    copies = CachedCopies("img-1")
    glance = ScriptedGlance(answers={"img-1": answer})
    check, _ = _check(copies, glance, clock)
    check.not_found("img-1", caller_is_admin=False)
    await check.idle()
    assert glance.count("img-1") == 1, "the check ran"
    assert copies.evicted == [], "and kept the copy"
    assert "img-1" in copies.index


async def test_images_not_cached_are_not_checked() -> None:
    clock = FakeClock()
    copies = CachedCopies()
    glance = ScriptedGlance(answers={"img-1": refusal(404)})
    check, _ = _check(copies, glance, clock)
    check.not_found("img-1", caller_is_admin=False)
    check.not_found("img-1", caller_is_admin=True)
    await settle()
    assert glance.calls == []
    assert copies.evicted == []


async def test_a_check_in_flight_is_not_doubled_and_close_cancels_it() -> None:
    clock = FakeClock()
    copies = CachedCopies("img-1")
    glance = ScriptedGlance(answers={"img-1": refusal(404)}, gate=asyncio.Event())
    check, _ = _check(copies, glance, clock)
    check.not_found("img-1", caller_is_admin=False)
    await settle()
    await clock.advance(INTERVAL + 1)  # the interval has passed, but one is still running
    check.not_found("img-1", caller_is_admin=False)
    await settle()
    assert glance.count("img-1") == 1
    await check.close()
    assert copies.evicted == [], "a cancelled check purges nothing"
