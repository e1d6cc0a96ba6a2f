"""The ``edgecache`` command as operators run it: bad configs and --version.

See docs/behaviour.md#command-line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgecache import __version__
from lab.edgecache import EdgecacheConfig, run_cli

#: A refused configuration must fail well before anything would be served.
QUICK = 10.0


@dataclass(frozen=True)
class BadConfig:
    name: str
    #: what differs from a good noauth config, by section (None drops an option)
    options: dict[str, dict[str, str | None]]
    #: words the one-line message must contain (the option, the offending value)
    mentions: tuple[str, ...]


def _bad(section: str, key: str, value: str | None) -> dict[str, dict[str, str | None]]:
    return {section: {key: value}}


BAD_CONFIGS = [
    BadConfig("missing-glance-endpoints", _bad("upstream", "glance_endpoints", None),
              ("glance_endpoints",)),
    BadConfig("empty-glance-endpoints", _bad("upstream", "glance_endpoints", ""),
              ("glance_endpoints",)),
    BadConfig("glance-endpoint-not-a-url",
              _bad("upstream", "glance_endpoints", "glance.example.com:9292"),
              ("glance_endpoints", "glance.example.com:9292")),
    BadConfig("max-size-not-a-size", _bad("cache", "max_size", "lots"), ("max_size", "lots")),
    BadConfig("max-size-negative", _bad("cache", "max_size", "-5G"), ("max_size", "-5G")),
    BadConfig("max-size-unknown-suffix", _bad("cache", "max_size", "10X"), ("max_size", "10X")),
    BadConfig("stall-time-zero", _bad("cache", "stall_time", "0"), ("stall_time",)),
    BadConfig("auth-strategy-unknown", _bad("DEFAULT", "auth_strategy", "magic"),
              ("auth_strategy",)),
]


def _write_config(tmp_path: Path, bad: BadConfig) -> Path:
    config = EdgecacheConfig(glance_endpoints=["http://127.0.0.1:9"], cache_dir=tmp_path / "cache",
                             options=bad.options)
    return config.write(tmp_path / "edgecache.conf")


def _assert_one_line_error(stderr: str, mentions: tuple[str, ...]) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    (line,) = lines
    assert line.startswith("edgecache:"), line
    assert "Traceback" not in stderr
    for word in mentions:
        assert word in line, f"{word!r} missing from {line!r}"


@pytest.mark.parametrize("bad", BAD_CONFIGS, ids=[b.name for b in BAD_CONFIGS])
def test_serve_with_a_bad_config_exits_quickly_with_one_clear_line(
    tmp_path: Path, bad: BadConfig
) -> None:
    config = _write_config(tmp_path, bad)
    started = time.monotonic()
    result = run_cli(["serve", "--config-file", str(config)], timeout=QUICK + 20)
    elapsed = time.monotonic() - started

    assert result.returncode != 0, result.stderr
    assert elapsed < QUICK, f"took {elapsed:.1f} s to refuse the configuration"
    _assert_one_line_error(result.stderr, bad.mentions)
    assert result.stdout == ""
    assert not (tmp_path / "cache").exists(), "a refused config still created the cache"


def test_serve_with_a_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.conf"
    result = run_cli(["serve", "--config-file", str(missing)], timeout=QUICK + 20)
    assert result.returncode != 0
    _assert_one_line_error(result.stderr, (str(missing),))


def test_version() -> None:
    result = run_cli(["--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"edgecache, version {__version__}"
    assert result.stderr == ""
