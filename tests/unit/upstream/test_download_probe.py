"""GlanceUpstream.may_download: what Glance's answer to a one-byte ``/file`` GET means.

206, 200 (a Glance that ignores Range), 204 (no data), 416 (a 0-byte image has no
byte 0) and 400 (a store that cannot seek) all mean the ``download_image`` policy let
the call through; 401/403/404 are Glance's refusal, relayed with its body; a 200 of a
big image is not read.
"""

from __future__ import annotations

import os

import pytest

from edgecache.errors import UpstreamError, UpstreamRefused
from edgecache.upstream.glance import GlanceUpstream
from lab.units import MiB
from tests.support.faultyglance import FaultyGlance


async def test_a_one_byte_answer_is_allowed(faulty_glance: FaultyGlance) -> None:
    image_id = faulty_glance.add_image(os.urandom(1000))["id"]
    async with GlanceUpstream((faulty_glance.url,)) as glance:
        await glance.may_download(image_id, {"x-auth-token": "tok"})
    probe = faulty_glance.requests[-1]
    assert (probe.range, probe.headers["x-auth-token"]) == ("bytes=0-0", "tok")


async def test_an_empty_image_and_an_image_without_data_are_allowed(
    faulty_glance: FaultyGlance,
) -> None:
    empty = faulty_glance.add_image(b"")["id"]  # bytes=0-0 of 0 bytes: 416
    queued = faulty_glance.add_image(b"", status="queued")["id"]  # 204
    async with GlanceUpstream((faulty_glance.url,)) as glance:
        await glance.may_download(empty, {})
        await glance.may_download(queued, {})


async def test_a_glance_ignoring_range_is_allowed_and_its_body_left_unread(
    faulty_glance: FaultyGlance,
) -> None:
    image_id = faulty_glance.add_image(b"x")["id"]
    faulty_glance.stub("GET", f"/v2/images/{image_id}/file", status=200, body=os.urandom(32 * MiB))
    async with GlanceUpstream((faulty_glance.url,)) as glance:
        await glance.may_download(image_id, {})


async def test_a_store_that_cannot_read_ranges_is_allowed(faulty_glance: FaultyGlance) -> None:
    """Glance answers 400 for a Range its store cannot serve: the policy check came first."""
    image_id = faulty_glance.add_image(b"x")["id"]
    faulty_glance.stub("GET", f"/v2/images/{image_id}/file", status=400,
                       json_body={"error": {"message": "Range not supported"}})
    async with GlanceUpstream((faulty_glance.url,)) as glance:
        await glance.may_download(image_id, {})


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_a_refusal_is_glances_own(faulty_glance: FaultyGlance, status: int) -> None:
    image_id = faulty_glance.add_image(b"x")["id"]
    faulty_glance.stub("GET", f"/v2/images/{image_id}/file", status=status,
                       json_body={"error": {"message": "not yours"}})
    async with GlanceUpstream((faulty_glance.url,)) as glance:
        with pytest.raises(UpstreamRefused) as refused:
            await glance.may_download(image_id, {})
    assert refused.value.status == status
    assert b"not yours" in refused.value.body


async def test_an_unavailable_glance_is_no_verdict(faulty_glance: FaultyGlance) -> None:
    image_id = faulty_glance.add_image(b"x")["id"]
    faulty_glance.stub("GET", f"/v2/images/{image_id}/file", status=503)
    async with GlanceUpstream((faulty_glance.url,)) as glance:
        with pytest.raises(UpstreamError):
            await glance.may_download(image_id, {})
