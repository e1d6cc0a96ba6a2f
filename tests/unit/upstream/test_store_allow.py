"""``[upstream] direct_store_allow``: which URLs a direct store read may open.

docs/behaviour.md#direct-store-reads.

Prefixes are compared on parsed URLs: scheme, host, port with default ports made
explicit, the path at a segment boundary; user information, encoded separators
and dot segments are refused rather than interpreted.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgecache.daemon import config
from edgecache.errors import ConfigError
from edgecache.upstream.stores.allow import StoreAllowlist, StoreRefused


def allowed(allow: StoreAllowlist, url: str) -> bool:
    try:
        allow.check(url, "test")
    except StoreRefused as exc:
        assert exc.reason == "store_refused"
        return False
    return True


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://a.example/img", True),
        ("http://a.example/img/", True),
        ("http://a.example/img/x", True),
        ("http://A.EXAMPLE/img/x", True),
        ("http://a.example:80/img/x", True),  # the default port is the same origin
        ("http://a.example/img/x?sig=1", True),
        ("http://a.example/img2", False),  # not at a segment boundary
        ("http://a.example/imgx/y", False),
        ("http://a.example/", False),
        ("http://a.example.evil/img/x", False),
        ("http://evil.a.example/img/x", False),
        ("https://a.example/img/x", False),
        ("http://a.example:8080/img/x", False),
        ("http://a.example/img/../secret", False),  # normalised to /secret
        ("http://a.example/img/%2e%2e/secret", False),
        ("http://a.example/img/..%2fsecret", False),  # a server may decode %2F
        ("http://a.example/img/..%5Csecret", False),
        ("http://a.example@evil.example/img/x", False),  # userinfo: the host is evil
        ("http://user:pw@a.example/img/x", False),  # userinfo is refused outright
        ("http://evil.example#@a.example/img/x", False),
        ("http://a.example\\@evil.example/img/x", False),
        ("ftp://a.example/img/x", False),
        ("http:///img/x", False),
        ("not a url", False),
    ],
)
def test_an_http_prefix_covers_its_origin_and_path_only(url: str, ok: bool) -> None:
    assert allowed(StoreAllowlist(["http://a.example/img"]), url) is ok


def test_default_ports_and_trailing_slashes() -> None:
    allow = StoreAllowlist(["https://h.example:443/v1/AUTH_glance/", "http://[::1]:8080/"])
    assert allowed(allow, "https://h.example/v1/AUTH_glance/c/o")
    assert not allowed(allow, "https://h.example/v1/AUTH_glance")  # the prefix ends in "/"
    assert not allowed(allow, "https://h.example/v1/AUTH_glance2/c/o")
    assert not allowed(allow, "http://h.example/v1/AUTH_glance/c/o")
    assert allowed(allow, "http://[::1]:8080/anything")
    assert not allowed(allow, "http://[::1]/anything")


def test_an_empty_allowlist_allows_nothing() -> None:
    allow = StoreAllowlist([])
    assert not allow
    assert not allowed(allow, "http://127.0.0.1/x")
    assert not allowed(allow, Path("/etc/passwd").as_uri())


@pytest.mark.parametrize(
    "prefix",
    ["http://u:p@a.example/", "http://a.example/?x=1", "http://a.example/#f",
     "http://a.example/a/%2e%2e/", "ftp://a.example/", "s3://a.example/b/",
     "file://otherhost/srv/", "http:///x"],
)
def test_unusable_prefixes_are_configuration_errors(prefix: str) -> None:
    with pytest.raises(ConfigError, match="direct_store_allow"):
        StoreAllowlist([prefix])


def test_the_option_defaults_to_nothing_and_refuses_bad_prefixes(tmp_path: Path) -> None:
    conf = tmp_path / "edgecache.conf"
    base = ("[DEFAULT]\nauth_strategy = noauth\n"
            "[upstream]\nglance_endpoints = http://g:9292\ndirect_stores = true\n")
    conf.write_text(base)
    assert config.load(["--config-file", str(conf)]).upstream.direct_store_allow == ()
    conf.write_text(base + "direct_store_allow = file:///srv/glance/, https://s.example/v1/\n")
    assert config.load(["--config-file", str(conf)]).upstream.direct_store_allow == (
        "file:///srv/glance/", "https://s.example/v1/",
    )
    conf.write_text(base + "direct_store_allow = http://admin:s3cret@s.example/\n")
    with pytest.raises(ConfigError, match="user information") as refused:
        config.load(["--config-file", str(conf)])
    assert "s3cret" not in str(refused.value)


def test_file_urls_are_judged_by_their_real_path(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "img").write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    os.symlink(outside, store / "link")
    allow = StoreAllowlist([store.as_uri() + "/"])

    assert allow.check_file((store / "img").as_uri(), "t") == str(store / "img")
    for url in [
        outside.as_uri(),
        (store / "link").as_uri(),  # a symlink out of the store
        store.as_uri() + "/../outside",
        store.as_uri() + "/%2e%2e/outside",
        "file://otherhost" + str(store / "img"),
        "file://localhost:1" + str(store / "img"),
    ]:
        with pytest.raises(StoreRefused):
            allow.check_file(url, "t")
    # the allowed directory itself behind a symlink: compared where its files really are
    os.symlink(store, tmp_path / "alias")
    via_alias = StoreAllowlist([(tmp_path / "alias").as_uri() + "/"])
    assert via_alias.check_file((store / "img").as_uri(), "t") == str(store / "img")
