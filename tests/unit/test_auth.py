"""Token hygiene of edgecache.access.tokens without a Keystone: identities, log redaction."""

from __future__ import annotations

import logging

import pytest

from edgecache.access.tokens import Identity, quiet_keystone_loggers
from edgecache.api.authn import needs_token

FERNET = "gAAAAABpZx" + "Ab1-_" * 30


def test_admin_is_glances_role_admin() -> None:
    assert Identity("u", "p", frozenset({"admin", "member"})).is_admin
    assert not Identity("u", "p", frozenset({"member", "reader"})).is_admin


@pytest.mark.parametrize(
    ("path", "needed"),
    [("/v2/images/x/file", True), ("/v2/images", True), ("/glance/v2/cache", True),
     ("/v2", True), ("/", False), ("/versions", False), ("/prefix/versions", False),
     ("/metrics", False), ("/healthcheck", False), ("/v3/auth/tokens", False)],
)
def test_which_paths_need_a_token(path: str, needed: bool) -> None:
    assert needs_token(path) is needed


def test_keystone_loggers_never_show_a_token(caplog: pytest.LogCaptureFixture) -> None:
    quiet_keystone_loggers()
    logger = logging.getLogger("keystonemiddleware.auth_token")
    with caplog.at_level(logging.DEBUG):
        logging.getLogger().setLevel(logging.DEBUG)
        logger.debug("validating %s", FERNET)  # below WARNING: dropped
        logger.warning("Identity response: %s", f'{{"error": "Could not find token: {FERNET}"}}')
        try:
            raise ValueError(f"bad token {FERNET}")
        except ValueError:
            logger.warning("Invalid token contents.", exc_info=True)
    text = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert FERNET not in text
    assert FERNET[:20] not in text
    assert "Identity response" in text and "<redacted>" in text
    assert "validating" not in text


def test_only_plain_user_tokens_skip_the_thread() -> None:
    from edgecache.access.tokens import _known_key

    assert _known_key({"X-Auth-Token": "abc"}) == _known_key({"X-Auth-Token": " abc "})
    assert _known_key({"X-Auth-Token": "abc"}) != _known_key({"X-Auth-Token": "abd"})
    assert _known_key({"X-Auth-Token": "abc", "X-Service-Token": "s"}) is None
    assert _known_key({}) is None


def test_a_token_is_reused_until_shortly_before_it_expires() -> None:
    import datetime as dt

    from edgecache.access.tokens import _reusable_for

    def info(**token: object) -> dict[str, object]:
        return {"keystone.token_info": {"token": token}}

    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=100)).isoformat()
    assert 95 < _reusable_for(info(expires_at=soon)) < 100
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)).isoformat()
    assert _reusable_for(info(expires_at=past)) == 0
    assert _reusable_for(info(expires_at=soon, application_credential={"id": "x"})) == 0
    assert _reusable_for(info(expires_at="not a time")) == 0
    assert _reusable_for({}) == 0
