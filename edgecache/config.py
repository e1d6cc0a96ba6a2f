"""Every edgecache option, declared once with oslo.config (spec §3).

The rest of the code never reads ``cfg.CONF``: :func:`load` turns the parsed
options into frozen :class:`Settings`, so tests build settings directly and no
module holds global configuration.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from oslo_config import cfg, types

from edgecache import __version__
from edgecache.errors import ConfigError

DEFAULT_CONFIG_FILE = "/etc/edgecache/edgecache.conf"
_SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class ByteSize(types.ConfigType):
    """A byte count written as ``10G``, ``512M``, ``1.5T`` or plain bytes (binary units)."""

    _PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)

    def __init__(self) -> None:
        super().__init__(type_name="byte size")

    def __call__(self, value: Any) -> int:
        if isinstance(value, int):
            return value
        match = self._PATTERN.match(str(value))
        if match is None:
            raise ValueError(f"{value!r} is not a size such as 500M, 10G or 2T")
        number, suffix = match.groups()
        return int(float(number) * _SIZE_SUFFIXES[suffix.upper()])

    def _formatter(self, value: Any) -> str:
        size = self(value)
        for suffix in ("T", "G", "M", "K"):
            unit = _SIZE_SUFFIXES[suffix]
            if size and size % unit == 0:
                return f"{size // unit}{suffix}"
        return str(size)

    def __repr__(self) -> str:
        return "ByteSize"

    def __eq__(self, other: object) -> bool:
        return self.__class__ == other.__class__

    __hash__ = types.ConfigType.__hash__


default_opts = [
    cfg.HostAddressOpt(
        "bind_host",
        default="127.0.0.1",
        help="Address edgecache listens on. Nova's [glance] endpoint_override (or "
        "api_servers) points at it; keep it on loopback unless other hosts must reach it.",
    ),
    cfg.PortOpt("bind_port", default=9292, help="TCP port edgecache listens on."),
    cfg.StrOpt(
        "auth_strategy",
        default="keystone",
        choices=[
            ("keystone", "validate tokens with keystonemiddleware ([keystone_authtoken])"),
            ("noauth", "no token validation; Glance's own answers still authorize every image"),
        ],
        help="How callers are authenticated.",
    ),
]

cache_opts = [
    cfg.StrOpt(
        "directory",
        default=os.environ.get("CACHE_DIRECTORY", "/var/cache/edgecache").split(":")[0],
        sample_default="/var/cache/edgecache",
        help="Root of the on-disk cache. Committed images live in data/, fills in "
        "progress in incomplete/, the index in index/. Defaults to systemd's "
        "$CACHE_DIRECTORY when set.",
    ),
    cfg.Opt(
        "max_size",
        type=ByteSize(),
        default="10G",
        help="Upper bound on the bytes of committed and in-progress images. The "
        "least recently used images are evicted to stay under it, and space is "
        "reserved before a fill starts. Suffixes K, M, G, T (binary) are accepted.",
    ),
    cfg.IntOpt(
        "stall_time",
        default=86400,
        min=1,
        help="Seconds without progress after which an incomplete fill is abandoned "
        "and its partial file removed.",
    ),
    cfg.BoolOpt(
        "verify",
        default=True,
        help="Verify each image against its strongest hash (os_hash_value, else the "
        "md5 checksum, else its size) before committing it. With false only the "
        "size is checked.",
    ),
]

upstream_opts = [
    cfg.ListOpt(
        "glance_endpoints",
        default=[],
        help="Glance API URLs (for example http://glance.example.com:9292), tried in "
        "order. Required.",
    ),
    cfg.IntOpt(
        "auth_cache_ttl",
        default=60,
        min=0,
        help="Seconds an upstream answer to 'may this caller read this image' (the "
        "image's metadata) is reused. Every cache hit is revalidated against upstream "
        "metadata at least this often; 0 checks on every request.",
    ),
    cfg.IntOpt(
        "max_resume_attempts",
        default=5,
        min=0,
        help="How many times a fill resumes an upstream body that broke off, with "
        "'Range: bytes=N-' on the same or the next endpoint, before it fails.",
    ),
    cfg.FloatOpt(
        "connect_timeout",
        default=10.0,
        min=0.1,
        help="Seconds to wait for a TCP connection to an upstream Glance.",
    ),
    cfg.FloatOpt(
        "read_timeout",
        default=300.0,
        min=0.1,
        help="Seconds to wait for the next bytes of an upstream response before the "
        "request (or fill) fails.",
    ),
]

_GROUPS: list[tuple[str | None, list[cfg.Opt]]] = [
    (None, default_opts),
    ("cache", cache_opts),
    ("upstream", upstream_opts),
]


def list_opts() -> list[tuple[str | None, list[cfg.Opt]]]:
    """The options for oslo-config-generator (entry point ``oslo.config.opts``)."""
    return [(group, list(opts)) for group, opts in _GROUPS]


@dataclass(frozen=True)
class CacheSettings:
    directory: str
    max_size: int
    stall_time: float = 86400.0
    verify: bool = True


@dataclass(frozen=True)
class UpstreamSettings:
    glance_endpoints: tuple[str, ...]
    auth_cache_ttl: float = 60.0
    max_resume_attempts: int = 5
    connect_timeout: float = 10.0
    read_timeout: float = 300.0


@dataclass(frozen=True)
class Settings:
    cache: CacheSettings
    upstream: UpstreamSettings
    bind_host: str = "127.0.0.1"
    bind_port: int = 9292
    auth_strategy: str = "noauth"


def register(conf: cfg.ConfigOpts) -> None:
    for group, opts in _GROUPS:
        conf.register_opts(opts, group=group)


def load(argv: Sequence[str], conf: cfg.ConfigOpts | None = None) -> Settings:
    """Parse ``--config-file``/``--config-dir`` arguments into :class:`Settings`."""
    conf = conf if conf is not None else cfg.ConfigOpts()
    register(conf)
    default_files = [DEFAULT_CONFIG_FILE] if os.path.exists(DEFAULT_CONFIG_FILE) else []
    try:
        conf(
            list(argv),
            project="edgecache",
            prog="edgecache serve",
            version=__version__,
            default_config_files=default_files,
        )
    except (cfg.Error, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    return settings_from(conf)


def settings_from(conf: cfg.ConfigOpts) -> Settings:
    """Validate the parsed options and freeze them."""
    try:
        return _settings_from(conf)
    except cfg.ConfigFileValueError as exc:  # oslo.config converts values when read
        raise ConfigError(_plain_value_error(exc)) from exc
    except (cfg.Error, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def _plain_value_error(exc: Exception) -> str:
    """oslo.config's message names a LocationInfo repr; operators need the option and value."""
    text = str(exc)
    match = re.search(r"Value for option (\S+) from .*? is not valid: (.*)", text)
    return f"option {match.group(1)}: {match.group(2)}" if match else text


def _settings_from(conf: cfg.ConfigOpts) -> Settings:
    endpoints = tuple(e.rstrip("/") for e in conf.upstream.glance_endpoints if e.strip())
    if not endpoints:
        raise ConfigError("[upstream] glance_endpoints is required: the Glance API URL(s)")
    for endpoint in endpoints:
        if not re.match(r"^https?://[^/]+", endpoint):
            raise ConfigError(f"[upstream] glance_endpoints: {endpoint!r} is not an http(s) URL")
    settings = Settings(
        bind_host=conf.bind_host,
        bind_port=conf.bind_port,
        auth_strategy=conf.auth_strategy,
        cache=CacheSettings(
            directory=conf.cache.directory,
            max_size=conf.cache.max_size,
            stall_time=float(conf.cache.stall_time),
            verify=conf.cache.verify,
        ),
        upstream=UpstreamSettings(
            glance_endpoints=endpoints,
            auth_cache_ttl=float(conf.upstream.auth_cache_ttl),
            max_resume_attempts=conf.upstream.max_resume_attempts,
            connect_timeout=conf.upstream.connect_timeout,
            read_timeout=conf.upstream.read_timeout,
        ),
    )
    if settings.auth_strategy != "noauth":
        raise ConfigError(
            f"auth_strategy = {settings.auth_strategy} is not supported by this release yet; "
            "set auth_strategy = noauth"
        )
    return settings
