"""The operator features' pure parts: the durable queue, the options.

The rate cap's tests are in tests/unit/ops/test_ratelimit.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecache.daemon import config
from edgecache.errors import ConfigError
from edgecache.ops.prefetch import PrefetchQueue, QueuedImage


def test_queue_is_fifo_deduplicated_and_durable(tmp_path: Path) -> None:
    queue = PrefetchQueue(tmp_path / "prefetch")
    assert queue.open() == []
    for n, image_id in enumerate(("a", "b", "c")):
        queue.put(QueuedImage(image_id, queued_at=float(n)))
    queue.put(QueuedImage("a", queued_at=0.0, pin=True))  # an update keeps its place
    queue.remove("b")
    queue.close()

    reopened = PrefetchQueue(tmp_path / "prefetch")
    items = reopened.open()
    assert [(i.image_id, i.pin) for i in items] == [("a", True), ("c", False)]
    reopened.clear()
    reopened.close()
    assert PrefetchQueue(tmp_path / "prefetch").open() == []


def _load(tmp_path: Path, text: str) -> config.Settings:
    path = tmp_path / "edgecache.conf"
    path.write_text("[upstream]\nglance_endpoints = http://127.0.0.1:9\n" + text)
    return config.load(["--config-file", str(path)])


def test_operator_options(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        "[DEFAULT]\nauth_strategy = noauth\n"
        "[cache]\nscrub_rate = 0\nscrub_interval = 60\n"
        "[prefetch]\nworkers = 4\nmax_rate = 20M\n"
        "[cache_api]\nadmin_roles = admin, cloud-operator\n"
        # ignored in noauth mode: no token is ever sent
        "[upstream_auth]\nauth_type = password\nauth_url = http://127.0.0.1:5000/v3\n",
    )
    assert (settings.cache.scrub_rate, settings.cache.scrub_interval) == (0, 60.0)
    assert (settings.prefetch.workers, settings.prefetch.max_rate) == (4, 20 << 20)
    assert settings.prefetch.upstream_auth is None
    assert settings.cache_api.admin_roles == ("admin", "cloud-operator")
    defaults = _load(tmp_path, "[DEFAULT]\nauth_strategy = noauth\n")
    assert (defaults.cache.scrub_rate, defaults.prefetch.workers) == (50 << 20, 2)
    assert defaults.prefetch.max_rate == 0
    with pytest.raises(ConfigError, match="workers"):
        _load(tmp_path, "[DEFAULT]\nauth_strategy = noauth\n[prefetch]\nworkers = 0\n")


def test_upstream_auth_is_loaded_with_keystoneauth(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        "[DEFAULT]\nauth_strategy = keystone\n"
        "[keystone_authtoken]\nwww_authenticate_uri = http://127.0.0.1:5000\n"
        "auth_url = http://127.0.0.1:5000\nauth_type = password\nusername = glance\n"
        "password = pw\nproject_name = service\nuser_domain_id = default\n"
        "project_domain_id = default\n"
        "[upstream_auth]\nauth_type = password\nauth_url = http://127.0.0.1:5000/v3\n"
        "username = edgecache\npassword = secret\nproject_name = service\n"
        "user_domain_id = default\nproject_domain_id = default\n",
    )
    session = settings.prefetch.upstream_auth
    assert session is not None
    assert type(session.auth).__name__ == "Password"  # nothing sent to Keystone yet
