"""The router and the token check read one request target: the one the client sent."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from edgecache.api.authn import needs_token
from edgecache.api.target import request_target


@pytest.mark.parametrize(
    ("sent", "path", "query"),
    [
        ("/v2/images?name=a%3Fb", "/v2/images", "name=a%3Fb"),
        ("/v2/images/x%3Fy/file", "/v2/images/x%3Fy/file", ""),
        ("/v2/images?name=%7e", "/v2/images", "name=%7e"),
        ("http://glance.example/v2/images?limit=1", "/v2/images", "limit=1"),
    ],
)
def test_the_target_is_what_the_client_sent(sent: str, path: str, query: str) -> None:
    assert request_target(make_mocked_request("GET", sent)) == (path, query)


def test_the_token_check_judges_the_path_the_router_serves() -> None:
    """A percent-encoded ``%3F`` is part of the path, not the start of a query: a
    token is needed for the /v2 path it is in."""
    request = make_mocked_request("GET", "/v2/images/a%3F/file")
    path, _ = request_target(request)
    assert path == "/v2/images/a%3F/file"
    assert needs_token(path)
    assert not needs_token(request_target(make_mocked_request("GET", "/healthcheck"))[0])
