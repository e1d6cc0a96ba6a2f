"""Options parse as documented, and the shipped sample is what the generator makes."""

import subprocess
import sys
from pathlib import Path

import pytest

from edgecache.daemon import config
from edgecache.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("text", "size"),
    [("10G", 10 << 30), ("512M", 512 << 20), ("1.5T", int(1.5 * (1 << 40))), ("2048", 2048),
     ("4k", 4096), ("3GiB", 3 << 30)],
)
def test_byte_sizes(text: str, size: int) -> None:
    assert config.ByteSize()(text) == size


def test_bad_byte_size() -> None:
    with pytest.raises(ValueError, match="not a size"):
        config.ByteSize()("ten gigs")


def _write(tmp_path: Path, body: str) -> str:
    path = tmp_path / "edgecache.conf"
    path.write_text(body)
    return str(path)


def test_load_a_config_file(tmp_path: Path) -> None:
    conf = _write(tmp_path, """
[DEFAULT]
bind_port = 9393
auth_strategy = noauth
[cache]
directory = /tmp/somewhere
max_size = 20G
stall_time = 30
[upstream]
glance_endpoints = http://127.0.0.1:9292/, http://127.0.0.2:9292
auth_cache_ttl = 5
""")
    settings = config.load(["--config-file", conf])
    assert settings.bind_port == 9393
    assert settings.cache.max_size == 20 << 30
    assert settings.cache.stall_time == 30
    assert settings.upstream.glance_endpoints == ("http://127.0.0.1:9292", "http://127.0.0.2:9292")
    assert settings.upstream.auth_cache_ttl == 5


def test_missing_endpoint_is_a_clear_error(tmp_path: Path) -> None:
    conf = _write(tmp_path, "[DEFAULT]\nauth_strategy = noauth\n")
    with pytest.raises(ConfigError, match="glance_endpoints is required"):
        config.load(["--config-file", conf])


def test_bad_value_is_a_clear_error(tmp_path: Path) -> None:
    conf = _write(tmp_path, "[cache]\nmax_size = lots\n[upstream]\nglance_endpoints = http://x\n")
    with pytest.raises(ConfigError, match="max_size"):
        config.load(["--config-file", conf])


def test_sample_config_is_current(tmp_path: Path) -> None:
    generated = tmp_path / "edgecache.conf.sample"
    subprocess.run(
        [sys.executable, "-m", "oslo_config.generator", "--namespace", "edgecache",
         "--namespace", "keystonemiddleware.auth_token", "--namespace", "castellan.config",
         "--wrap-width", "79",
         "--output-file", str(generated)],
        check=True, cwd=REPO,
    )
    shipped = REPO / "etc" / "edgecache" / "edgecache.conf.sample"
    assert generated.read_text() == shipped.read_text(), (
        "etc/edgecache/edgecache.conf.sample is stale: run "
        "oslo-config-generator --config-file etc/edgecache/edgecache-config-generator.conf"
    )


def test_keystone_needs_an_auth_plugin_in_keystone_authtoken(tmp_path: Path) -> None:
    base = "[DEFAULT]\nauth_strategy = keystone\n[upstream]\nglance_endpoints = http://g:9292\n"
    with pytest.raises(ConfigError, match=r"\[keystone_authtoken\] auth_type"):
        config.load(["--config-file", _write(tmp_path, base)])
    settings = config.load(["--config-file", _write(tmp_path, base + (
        "serve_cached_on_upstream_failure = true\noffline_auth_ttl = 120\n"
        "[keystone_authtoken]\nauth_type = password\nauth_url = http://k:5000/v3\n"
        "username = edgecache\npassword = pw\nproject_name = service\n"
    ))])
    assert settings.auth_strategy == "keystone"
    assert settings.keystone_conf is not None
    assert settings.keystone_conf.keystone_authtoken.auth_type == "password"
    assert settings.upstream.serve_cached_on_upstream_failure
    assert settings.upstream.offline_auth_ttl == 120


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", None), ("http://127.0.0.1:65001", "http://127.0.0.1:65001"),
     ("http://proxy.example.com:3128/", "http://proxy.example.com:3128/")],
)
def test_http_proxy(tmp_path: Path, value: str, expected: str | None) -> None:
    conf = _write(tmp_path, "[DEFAULT]\nauth_strategy = noauth\n[upstream]\n"
                  f"glance_endpoints = http://127.0.0.1:9292\nhttp_proxy = {value}\n")
    assert config.load(["--config-file", conf]).upstream.http_proxy == expected


@pytest.mark.parametrize("value", ["127.0.0.1:3128", "socks5://127.0.0.1:1080",
                                   "http://proxy/with/path"])
def test_http_proxy_must_be_an_http_proxy_url(tmp_path: Path, value: str) -> None:
    conf = _write(tmp_path, "[DEFAULT]\nauth_strategy = noauth\n[upstream]\n"
                  f"glance_endpoints = http://127.0.0.1:9292\nhttp_proxy = {value}\n")
    with pytest.raises(ConfigError, match="http_proxy"):
        config.load(["--config-file", conf])


def test_the_daemon_runs_on_uvloop_unless_told_otherwise(tmp_path: Path) -> None:
    base = "[upstream]\nglance_endpoints = http://g:9292\n"
    noauth = "[DEFAULT]\nauth_strategy = noauth\n"
    assert config.load(["--config-file", _write(tmp_path, noauth + base)]).event_loop == "uvloop"
    chosen = _write(tmp_path, noauth + "event_loop = asyncio\n" + base)
    assert config.load(["--config-file", chosen]).event_loop == "asyncio"
    with pytest.raises(ConfigError, match="event_loop"):
        config.load(["--config-file", _write(tmp_path, noauth + "event_loop = trio\n" + base)])
