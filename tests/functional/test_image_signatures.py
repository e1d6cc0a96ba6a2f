"""Glance image signatures are verified in the fill's one pass, before the last byte.

docs/behaviour.md#image-signatures. The certificate comes from the key manager
castellan is configured with (here tests/support/keymanager.py's, in memory; the
integration tier runs a real Barbican), asked with the token of the caller who
starts the fill. A bad signature is refused like an unsafe image; a certificate the
key manager will not give is this caller's refusal alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from edgecache.core import fill as fill_module
from edgecache.core.inspection import Mode, SafetyPolicy
from lab.units import KiB, MiB
from tests.functional import Edge, Fetched, file_path, start_edgecache
from tests.support.faultyglance import Fault, FaultyGlance
from tests.support.keymanager import InMemoryKeyManager, Signer, key_manager_conf

TOKEN = {"X-Auth-Token": "token-of-the-caller"}


@pytest.fixture(autouse=True)
def empty_key_manager() -> Iterator[None]:
    InMemoryKeyManager.certificates.clear()
    InMemoryKeyManager.asked.clear()
    yield
    InMemoryKeyManager.certificates.clear()
    InMemoryKeyManager.asked.clear()


@pytest.fixture
def signer() -> Signer:
    return Signer()


async def _edge(aiohttp_client: AiohttpClient, glance: FaultyGlance, root: Path, *,
                mode: Mode = Mode.ENFORCE, require: bool = False,
                auth_cache_ttl: float | None = None) -> Edge:
    policy = SafetyPolicy(mode, verify_signatures=True, require_signatures=require)
    options: dict[str, Any] = {} if auth_cache_ttl is None else {"auth_cache_ttl": auth_cache_ttl}
    return await start_edgecache(aiohttp_client, root, (glance.url,), image_safety=policy,
                                 key_manager_conf=key_manager_conf(), **options)


def _rejections(edge: Edge, reason: str = "signature") -> float:
    return edge.sample("edgecache_image_safety_rejections_total", reason=reason)


def _refused_before_any_byte(got: Fetched, reason: str) -> None:
    assert got.status == 403, (got.status, got.body[:300])
    assert got.headers["Content-Type"].startswith("application/json")
    assert reason.encode() in got.body


async def test_a_good_signature_is_served_and_cached(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path, signer: Signer,
) -> None:
    edge = await _edge(aiohttp_client, faulty_glance, tmp_path / "cache")
    data = os.urandom(3 * MiB)
    signer.store()
    image_id = faulty_glance.add_image(data, properties=signer.properties(data))["id"]
    got = await edge.fetch(file_path(image_id), headers=TOKEN)
    assert (got.status, got.error, got.body == data) == (200, None, True)
    await edge.settled()
    assert edge.data_files() == {image_id: len(data)}
    assert [context.auth_token for context in InMemoryKeyManager.asked] == [TOKEN["X-Auth-Token"]]
    hit = await edge.fetch(file_path(image_id), headers=TOKEN)
    assert (hit.status, hit.body == data) == (200, True)
    assert len(InMemoryKeyManager.asked) == 1, "a verified copy is not verified again per hit"
    assert _rejections(edge) == 0


@pytest.mark.parametrize("case", ["tampered", "wrong-certificate"])
async def test_a_signature_that_does_not_hold_is_cut_then_refused(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path, signer: Signer,
    monkeypatch: pytest.MonkeyPatch, case: str,
) -> None:
    """Known only with the last byte: the first caller's response is cut before it
    (never a clean end), the image is not cached, and later callers get a 403."""
    monkeypatch.setattr(fill_module, "INSPECTION_HOLD", 64 * KiB)  # headers go out early
    edge = await _edge(aiohttp_client, faulty_glance, tmp_path / "cache")
    signed = os.urandom(2 * MiB)
    if case == "tampered":
        signer.store()
        data = signed[:-1] + bytes([signed[-1] ^ 1])  # Glance's hashes are of these bytes
        properties = signer.properties(signed)
    else:
        data = signed
        other = Signer()
        other.store()
        properties = signer.properties(signed, certificate_uuid=other.uuid)
    image_id = faulty_glance.add_image(data, properties=properties,
                                       fault=Fault(trickle_chunk=256 * KiB))["id"]
    path = file_path(image_id)
    first = await edge.fetch(path, headers=TOKEN)
    assert first.status in (200, 403)
    assert first.status == 403 or first.broken, "never a clean end with unverified bytes"
    assert first.body != data
    await edge.settled()
    assert edge.data_files() == {} and edge.incomplete_files() == []
    assert _rejections(edge) == 1

    again = await edge.fetch(path, headers=TOKEN)
    _refused_before_any_byte(again, "signature")
    assert image_id.encode() in again.body
    assert faulty_glance.count("GET", path) == 1, "refused for good: no second data GET"
    detail = await (await edge.client.get("/v2/cache", params={"detail": "1"})).json()
    assert [(r["image_id"], r["reason"]) for r in detail["refused"]] == [(image_id, "signature")]


async def test_an_image_signed_again_is_checked_afresh(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path, signer: Signer,
) -> None:
    """A refused signature is remembered for those properties only: once the image's
    owner signs it right, the next caller's fill verifies it anew."""
    edge = await _edge(aiohttp_client, faulty_glance, tmp_path / "cache", auth_cache_ttl=0.0)
    data = os.urandom(1 * MiB)
    signer.store()
    image_id = faulty_glance.add_image(data, properties=signer.properties(b"other bytes"))["id"]
    first = await edge.fetch(file_path(image_id), headers=TOKEN)
    assert first.status == 403 or first.broken
    await edge.settled()
    faulty_glance.add_image(data, image_id=image_id, properties=signer.properties(data))
    again = await edge.fetch(file_path(image_id), headers=TOKEN)
    assert (again.status, again.error, again.body == data) == (200, None, True)
    await edge.settled()
    assert edge.data_files() == {image_id: len(data)}


async def test_a_certificate_the_key_manager_will_not_give_is_this_callers_refusal(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path, signer: Signer,
) -> None:
    """Refused before any byte (the certificate is asked for first), counted, and not
    remembered of the image: once the key manager has it, the image is served."""
    edge = await _edge(aiohttp_client, faulty_glance, tmp_path / "cache")
    data = os.urandom(1 * MiB)
    image_id = faulty_glance.add_image(data, properties=signer.properties(data))["id"]
    path = file_path(image_id)
    got = await edge.fetch(path, headers=TOKEN)
    _refused_before_any_byte(got, signer.uuid)
    assert faulty_glance.count("GET", path) == 0, "no byte of the image was fetched"
    await edge.settled()
    assert edge.data_files() == {}
    assert _rejections(edge) == 1
    detail = await (await edge.client.get("/v2/cache", params={"detail": "1"})).json()
    assert detail["refused"] == []

    signer.store()
    served = await edge.fetch(path, headers=TOKEN)
    assert (served.status, served.error, served.body == data) == (200, None, True)


async def test_incomplete_signature_properties_are_refused_before_any_byte(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path, signer: Signer,
) -> None:
    edge = await _edge(aiohttp_client, faulty_glance, tmp_path / "cache")
    data = os.urandom(256 * KiB)
    signer.store()
    properties = signer.properties(data)
    del properties["img_signature_hash_method"]
    image_id = faulty_glance.add_image(data, properties=properties)["id"]
    got = await edge.fetch(file_path(image_id), headers=TOKEN)
    _refused_before_any_byte(got, "img_signature_hash_method")
    assert faulty_glance.count("GET", file_path(image_id)) == 0
    assert _rejections(edge) == 1


async def test_required_signatures_refuse_an_unsigned_image(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path, signer: Signer,
) -> None:
    edge = await _edge(aiohttp_client, faulty_glance, tmp_path / "cache", require=True)
    data = os.urandom(256 * KiB)
    unsigned = faulty_glance.add_image(data)["id"]
    got = await edge.fetch(file_path(unsigned), headers=TOKEN)
    _refused_before_any_byte(got, "unsigned")
    assert _rejections(edge, "unsigned") == 1
    signer.store()
    signed = faulty_glance.add_image(data, properties=signer.properties(data))["id"]
    ok = await edge.fetch(file_path(signed), headers=TOKEN)
    assert (ok.status, ok.body == data) == (200, True)


async def test_unsigned_images_pass_unless_signatures_are_required(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path,
) -> None:
    edge = await _edge(aiohttp_client, faulty_glance, tmp_path / "cache")
    data = os.urandom(256 * KiB)
    image_id = faulty_glance.add_image(data)["id"]
    got = await edge.fetch(file_path(image_id), headers=TOKEN)
    assert (got.status, got.body == data) == (200, True)
    assert InMemoryKeyManager.asked == []


@pytest.mark.parametrize("case", ["tampered", "missing-certificate"])
async def test_log_mode_serves_and_counts(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path, signer: Signer,
    case: str,
) -> None:
    edge = await _edge(aiohttp_client, faulty_glance, tmp_path / "cache", mode=Mode.LOG)
    data = os.urandom(1 * MiB)
    if case == "tampered":
        signer.store()
        properties = signer.properties(data[1:])
    else:
        properties = signer.properties(data)
    image_id = faulty_glance.add_image(data, properties=properties)["id"]
    got = await edge.fetch(file_path(image_id), headers=TOKEN)
    assert (got.status, got.error, got.body == data) == (200, None, True)
    await edge.settled()
    assert edge.data_files() == {image_id: len(data)}
    assert _rejections(edge) == 1
