"""MetadataCache: Glance's answers reused for the ttl, offline grants, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from edgecache.access.grants import MetadataCache
from edgecache.errors import UpstreamError, UpstreamRefused
from tests.support.clock import FakeClock, settle
from tests.support.metadata import ScriptedGlance, image, refusal

TTL = 2.0
OFFLINE_TTL = 30.0
ALICE = {"x-auth-token": "tok-a"}
BOB = {"x-auth-token": "tok-b"}


def _cache(
    glance: ScriptedGlance, clock: FakeClock, *, ttl: float = TTL, offline_ttl: float = 0.0
) -> MetadataCache:
    return MetadataCache(glance, ttl=ttl, offline_ttl=offline_ttl, clock=clock)


async def test_an_answer_is_reused_for_the_ttl_then_asked_again() -> None:
    clock = FakeClock()
    glance = ScriptedGlance(answers={"img-1": image("img-1")})
    metadata = _cache(glance, clock)

    assert (await metadata.get("img-1", ALICE)).id == "img-1"
    await clock.advance(TTL)
    await metadata.get("img-1", ALICE)
    assert glance.count("img-1", "tok-a") == 1, "reused up to the ttl"

    await clock.advance(0.001)
    await metadata.get("img-1", ALICE)
    assert glance.count("img-1", "tok-a") == 2, "asked again just after it"


async def test_answers_are_per_caller() -> None:
    clock = FakeClock()
    glance = ScriptedGlance(answers={"img-1": image("img-1")})
    metadata = _cache(glance, clock)
    await metadata.get("img-1", ALICE)
    await metadata.get("img-1", BOB)
    assert glance.calls == [("img-1", "tok-a"), ("img-1", "tok-b")]


async def test_a_zero_ttl_reuses_nothing() -> None:
    glance = ScriptedGlance(answers={"img-1": image("img-1")})
    metadata = _cache(glance, FakeClock(), ttl=0.0)
    await metadata.get("img-1", ALICE)
    await metadata.get("img-1", ALICE)
    assert glance.count("img-1", "tok-a") == 2


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_refusals_are_not_reused(status: int) -> None:
    glance = ScriptedGlance(answers={"img-1": refusal(status)})
    metadata = _cache(glance, FakeClock())
    for _ in range(2):
        with pytest.raises(UpstreamRefused) as refused:
            await metadata.get("img-1", ALICE)
        assert refused.value.status == status
    assert glance.count("img-1", "tok-a") == 2


async def test_concurrent_identical_lookups_share_one_call() -> None:
    gate = asyncio.Event()
    glance = ScriptedGlance(answers={"img-1": image("img-1")}, gate=gate)
    metadata = _cache(glance, FakeClock())
    same = [asyncio.create_task(metadata.get("img-1", ALICE)) for _ in range(3)]
    other = asyncio.create_task(metadata.get("img-1", BOB))
    await settle()
    assert glance.calls == [("img-1", "tok-a"), ("img-1", "tok-b")]

    gate.set()
    answers = await asyncio.gather(*same, other)
    assert {answer.id for answer in answers} == {"img-1"}
    assert len(glance.calls) == 2


async def test_a_caller_going_away_does_not_cancel_the_shared_lookup() -> None:
    gate = asyncio.Event()
    glance = ScriptedGlance(answers={"img-1": image("img-1")}, gate=gate)
    metadata = _cache(glance, FakeClock())
    leaving = asyncio.create_task(metadata.get("img-1", ALICE))
    staying = asyncio.create_task(metadata.get("img-1", ALICE))
    await settle()
    leaving.cancel()
    await settle()
    gate.set()
    assert (await staying).id == "img-1"
    assert leaving.cancelled()
    assert len(glance.calls) == 1


async def test_forget_stops_reuse_at_once() -> None:
    clock = FakeClock()
    glance = ScriptedGlance(answers={"img-1": image("img-1"), "img-2": image("img-2")})
    metadata = _cache(glance, clock, offline_ttl=OFFLINE_TTL)
    await metadata.get("img-1", ALICE)
    await metadata.get("img-2", ALICE)

    metadata.forget("img-1")

    assert metadata.offline_answer("img-1", ALICE) is None, "its grant is gone too"
    assert metadata.offline_answer("img-2", ALICE) is not None, "other images keep theirs"
    await metadata.get("img-1", ALICE)
    await metadata.get("img-2", ALICE)
    assert glance.count("img-1", "tok-a") == 2
    assert glance.count("img-2", "tok-a") == 1
    metadata.forget("img-1")  # twice: each forget is a new generation
    await metadata.get("img-1", ALICE)
    assert glance.count("img-1", "tok-a") == 3


async def test_an_answer_in_flight_during_forget_is_not_reused() -> None:
    gate = asyncio.Event()
    glance = ScriptedGlance(answers={"img-1": image("img-1")}, gate=gate)
    metadata = _cache(glance, FakeClock(), offline_ttl=OFFLINE_TTL)
    asking = asyncio.create_task(metadata.get("img-1", ALICE))
    await settle()
    metadata.forget("img-1")
    gate.set()
    await asking
    assert metadata.offline_answer("img-1", ALICE) is None
    await metadata.get("img-1", ALICE)
    assert glance.count("img-1", "tok-a") == 2


async def test_offline_grant_holds_for_offline_ttl_then_lapses() -> None:
    clock = FakeClock()
    glance = ScriptedGlance(answers={"img-1": image("img-1")})
    metadata = _cache(glance, clock, offline_ttl=OFFLINE_TTL)
    await metadata.get("img-1", ALICE)

    await clock.advance(OFFLINE_TTL)
    granted = metadata.offline_answer("img-1", ALICE)
    assert granted is not None and granted.id == "img-1", "still within offline_ttl"
    assert metadata.offline_answer("img-1", BOB) is None, "only to the caller granted"

    await clock.advance(0.001)
    assert metadata.offline_answer("img-1", ALICE) is None, "too old just after it"


async def test_a_fresh_grant_restarts_offline_ttl() -> None:
    clock = FakeClock()
    glance = ScriptedGlance(answers={"img-1": image("img-1")})
    metadata = _cache(glance, clock, offline_ttl=OFFLINE_TTL)
    await metadata.get("img-1", ALICE)
    await clock.advance(OFFLINE_TTL - 1)
    await metadata.get("img-1", ALICE)  # the ttl has passed: Glance is asked, and grants
    await clock.advance(OFFLINE_TTL - 1)
    assert metadata.offline_answer("img-1", ALICE) is not None


async def test_a_refusal_withdraws_the_offline_grant() -> None:
    clock = FakeClock()
    glance = ScriptedGlance(answers={"img-1": image("img-1")})
    metadata = _cache(glance, clock, offline_ttl=OFFLINE_TTL)
    await metadata.get("img-1", ALICE)
    glance.answers["img-1"] = refusal(403)
    await clock.advance(TTL + 0.001)
    with pytest.raises(UpstreamRefused):
        await metadata.get("img-1", ALICE)
    assert metadata.offline_answer("img-1", ALICE) is None


async def test_an_outage_keeps_the_offline_grant() -> None:
    clock = FakeClock()
    glance = ScriptedGlance(answers={"img-1": image("img-1")})
    metadata = _cache(glance, clock, offline_ttl=OFFLINE_TTL)
    await metadata.get("img-1", ALICE)
    glance.answers["img-1"] = UpstreamError("no Glance answers")
    await clock.advance(TTL + 0.001)
    with pytest.raises(UpstreamError):
        await metadata.get("img-1", ALICE)
    assert metadata.offline_answer("img-1", ALICE) is not None


async def test_offline_answers_need_the_option_and_an_active_image() -> None:
    clock = FakeClock()
    glance = ScriptedGlance(
        answers={"img-1": image("img-1"), "img-2": image("img-2", status="deactivated")}
    )
    off = _cache(glance, clock)
    await off.get("img-1", ALICE)
    assert off.offline_answer("img-1", ALICE) is None, "offline_ttl 0: offline serving is off"

    on = _cache(glance, clock, offline_ttl=OFFLINE_TTL)
    await on.get("img-2", ALICE)
    assert on.offline_answer("img-2", ALICE) is None, "only active images are served"


async def test_reused_answers_and_grants_are_bounded() -> None:
    clock = FakeClock()
    glance = ScriptedGlance(answers={f"img-{n}": image(f"img-{n}") for n in range(3)})
    metadata = MetadataCache(
        glance, ttl=TTL, offline_ttl=OFFLINE_TTL, clock=clock, max_answers=2, max_grants=2
    )
    for n in range(3):
        await metadata.get(f"img-{n}", ALICE)
    assert metadata.offline_answer("img-0", ALICE) is None, "the oldest grant made room"
    assert metadata.offline_answer("img-2", ALICE) is not None
    await metadata.get("img-0", ALICE)
    await metadata.get("img-2", ALICE)
    assert glance.count("img-0", "tok-a") == 2, "the oldest answer made room"
    assert glance.count("img-2", "tok-a") == 1
