"""DownloadGrants: Glance's download_image verdict per caller, reused like the record.

On a fake clock: reused for auth_cache_ttl, one probe for identical concurrent
callers, refusals never reused (and voiding an older grant, offline too),
forgotten with the image, and keyed in keystone mode by the tokens only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from edgecache.access.grants import (
    KEYSTONE_CREDENTIALS,
    DownloadGrants,
    MetadataCache,
    credentials_key,
)
from edgecache.errors import UpstreamError, UpstreamRefused
from tests.support.clock import FakeClock
from tests.support.metadata import ScriptedGlance, refusal

TTL = 2.0
ALICE = {"x-auth-token": "tok-a"}
BOB = {"x-auth-token": "tok-b"}


@dataclass
class ScriptedDownloads:
    """``may_download`` answers: allowed unless ``refused`` names the token."""

    refused: dict[str | None, Exception] = field(default_factory=dict)
    gate: asyncio.Event | None = None
    calls: list[str | None] = field(default_factory=list)

    async def may_download(self, image_id: str, headers: Mapping[str, str]) -> None:
        token = headers.get("x-auth-token")
        self.calls.append(token)
        if self.gate is not None:
            await self.gate.wait()
        answer = self.refused.get(token)
        if answer is not None:
            raise answer


def _grants(
    source: ScriptedDownloads, clock: FakeClock, *, offline_ttl: float = 0.0
) -> tuple[DownloadGrants, MetadataCache]:
    metadata = MetadataCache(ScriptedGlance(), ttl=TTL, offline_ttl=offline_ttl, clock=clock)
    return DownloadGrants(source, metadata, clock=clock), metadata


async def test_a_grant_is_reused_for_the_ttl_then_asked_again() -> None:
    clock = FakeClock()
    source = ScriptedDownloads()
    grants, _ = _grants(source, clock)
    await grants.check("img-1", ALICE)
    await clock.advance(TTL)
    await grants.check("img-1", ALICE)
    assert source.calls == ["tok-a"]
    await clock.advance(0.001)
    await grants.check("img-1", ALICE)
    await grants.check("img-1", BOB)
    assert source.calls == ["tok-a", "tok-a", "tok-b"], "again after the ttl; per caller"


async def test_refusals_are_never_reused_and_void_an_older_grant() -> None:
    clock = FakeClock()
    source = ScriptedDownloads()
    grants, _ = _grants(source, clock, offline_ttl=60.0)
    await grants.check("img-1", ALICE)
    assert grants.offline_granted("img-1", ALICE)
    await clock.advance(TTL + 0.001)
    source.refused["tok-a"] = refusal(403)
    for _ in range(2):
        with pytest.raises(UpstreamRefused):
            await grants.check("img-1", ALICE)
    assert source.calls == ["tok-a"] * 3
    assert not grants.offline_granted("img-1", ALICE), "the latest word was no"


async def test_no_answer_is_no_grant() -> None:
    source = ScriptedDownloads(refused={"tok-a": UpstreamError("down")})
    grants, _ = _grants(source, FakeClock(), offline_ttl=60.0)
    with pytest.raises(UpstreamError):
        await grants.check("img-1", ALICE)
    assert not grants.offline_granted("img-1", ALICE)


async def test_identical_concurrent_checks_share_one_probe() -> None:
    source = ScriptedDownloads(gate=asyncio.Event())
    grants, _ = _grants(source, FakeClock())
    waiting = [asyncio.create_task(grants.check("img-1", ALICE)) for _ in range(5)]
    await asyncio.sleep(0)
    waiting[0].cancel()  # one caller leaving does not cancel the others' probe
    assert source.gate is not None
    source.gate.set()
    await asyncio.gather(*waiting[1:])
    assert source.calls == ["tok-a"]


async def test_a_starters_own_data_get_is_a_grant_and_forgetting_the_image_drops_it() -> None:
    clock = FakeClock()
    source = ScriptedDownloads()
    grants, metadata = _grants(source, clock, offline_ttl=60.0)
    grants.note(grants.key("img-1", ALICE))
    await grants.check("img-1", ALICE)
    assert source.calls == [], "folded: no probe"
    assert grants.offline_granted("img-1", ALICE)
    metadata.forget("img-1")
    assert not grants.offline_granted("img-1", ALICE)
    await grants.check("img-1", ALICE)
    assert source.calls == ["tok-a"]


def test_in_keystone_mode_only_the_tokens_say_who_calls() -> None:
    """A client's X-Roles or X-Identity-Status neither splits nor merges callers."""
    token = {"x-auth-token": "tok-a"}
    claims = {**token, "x-roles": "admin", "x-identity-status": "Confirmed",
              "x-user-id": "someone"}
    assert credentials_key(token, KEYSTONE_CREDENTIALS) == credentials_key(
        claims, KEYSTONE_CREDENTIALS)
    assert credentials_key(token, KEYSTONE_CREDENTIALS) != credentials_key(
        {"x-auth-token": "tok-b", "x-roles": "admin"}, KEYSTONE_CREDENTIALS)
    metadata = MetadataCache(ScriptedGlance(), ttl=TTL, credential_headers=KEYSTONE_CREDENTIALS)
    assert metadata.key("img-1", token) == metadata.key("img-1", claims)
