"""The one map from edgecache's errors to HTTP answers."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from edgecache.api.errors import answer_for
from edgecache.errors import (
    ChecksumMismatch,
    EdgecacheError,
    FillCoolingDown,
    FillStalled,
    NoSpace,
    NotFound,
    ShortBody,
    UpstreamError,
    UpstreamRefused,
)


def _message(response: web.Response) -> str:
    assert response.body is not None and isinstance(response.body, bytes)
    body = json.loads(response.body)
    assert body["error"]["code"] == response.status
    return str(body["error"]["message"])


@pytest.mark.parametrize("status", [401, 403, 404, 409])
def test_glances_refusal_is_relayed_as_glance_sent_it(status: int) -> None:
    refusal = UpstreamRefused(status, b'{"glance": "says no"}', {
        "Content-Type": "application/json", "WWW-Authenticate": "Keystone uri=x",
    })
    response = answer_for(refusal)
    assert response.status == status
    assert response.body == b'{"glance": "says no"}'
    assert response.headers["WWW-Authenticate"] == "Keystone uri=x"


def test_a_bodiless_204_stays_bodiless() -> None:
    response = answer_for(UpstreamRefused(204, b"", {}))
    assert response.status == 204
    assert not response.body


@pytest.mark.parametrize("exc", [
    UpstreamError("connection refused", reason="connect"),
    UpstreamError("timed out", reason="timeout"),
    ChecksumMismatch("sha512 differs"),
    ShortBody("short"),
    FillStalled("stalled"),
])
def test_no_bytes_to_give_is_a_503_nova_retries(exc: EdgecacheError) -> None:
    response = answer_for(exc)
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert "unavailable" in _message(response)


def test_a_cool_down_says_when_to_come_back() -> None:
    response = answer_for(FillCoolingDown("image x: last fill failed", retry_after=12.2))
    assert response.status == 503
    assert response.headers["Retry-After"] == "13"
    assert "image x" in _message(response)


def test_pins_that_do_not_fit_are_a_conflict() -> None:
    response = answer_for(NoSpace("would pin 70 bytes, more than max_size"))
    assert response.status == 409
    assert "max_size" in _message(response)


def test_not_found_is_404() -> None:
    assert answer_for(NotFound("no such object")).status == 404
