"""``auth_strategy = keystone`` never runs open: an unusable [keystone_authtoken] stops the
daemon at start with an error naming what is missing (docs/behaviour.md#authorization)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from edgecache.access.tokens import KeystoneValidator
from edgecache.api import authn
from edgecache.daemon import config
from edgecache.daemon.app import make_app
from edgecache.daemon.config import CacheSettings, Settings, UpstreamSettings
from edgecache.errors import ConfigError

BASE = "[DEFAULT]\nauth_strategy = keystone\n[upstream]\nglance_endpoints = http://g:9292\n"
PLUGIN = "[keystone_authtoken]\nauth_type = password\nauth_url = http://k:5000/v3\n"
USER = "username = edgecache\npassword = pw\nproject_name = service\n"


def _load(tmp_path: Path, body: str) -> Settings:
    path = tmp_path / "edgecache.conf"
    path.write_text(body)
    return config.load(["--config-file", str(path)])


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ("", r"auth_type"),
        ("[keystone_authtoken]\nauth_type = no-such-plugin\n", r"no-such-plugin"),
        ("[keystone_authtoken]\nauth_type = password\n" + USER, r"auth[_-]url"),
        (PLUGIN, r"username \(or user_id\) and password"),
        (PLUGIN + "username = edgecache\n", r"username \(or user_id\) and password"),
        ("[keystone_authtoken]\nauth_section = nowhere\n", r"nowhere"),
    ],
    ids=["no-plugin", "unknown-plugin", "no-auth-url", "no-user", "no-password",
         "empty-auth-section"],
)
def test_an_unusable_keystone_authtoken_refuses_to_start(
    tmp_path: Path, section: str, named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        _load(tmp_path, BASE + section)


def test_a_complete_password_plugin_starts(tmp_path: Path) -> None:
    settings = _load(tmp_path, BASE + PLUGIN + USER)
    assert settings.keystone_conf is not None


def test_keystone_mode_without_its_configuration_builds_no_open_app() -> None:
    """Settings made in code (not parsed) cannot slip past: no validator, no app."""
    settings = Settings(auth_strategy="keystone", keystone_conf=None,
                        cache=CacheSettings(directory="/nonexistent", max_size=1 << 30),
                        upstream=UpstreamSettings(glance_endpoints=("http://g:9292",)))
    with pytest.raises(ConfigError, match="keystone_authtoken"):
        make_app(settings)


def test_roles_in_keystone_mode_come_only_from_a_validated_token() -> None:
    """A client's X-Roles is believed with noauth only; in keystone mode a request without
    a validated identity has no roles at all, whatever it claims."""
    claims = {"X-Roles": "admin", "X-Identity-Status": "Confirmed"}
    noauth = make_mocked_request("GET", "/v2/cache", headers=claims, app=web.Application())
    assert authn.caller_roles(noauth) == frozenset({"admin"})
    keystone_app = web.Application()
    keystone_app[authn.VALIDATOR_KEY] = cast(KeystoneValidator, object())  # only its presence
    unvalidated = make_mocked_request("GET", "/v2/cache", headers=claims, app=keystone_app)
    assert authn.caller_roles(unvalidated) == frozenset()
