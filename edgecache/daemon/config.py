"""Every edgecache option, declared once with oslo.config (docs/behaviour.md#configuration).

The rest of the code never reads ``cfg.CONF``: :func:`load` turns the parsed
options into frozen :class:`Settings`, so tests build settings directly and no
module holds global configuration.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from oslo_config import cfg, types

from edgecache import __version__
from edgecache.core.inspection import DEFAULT_VMDK_TYPES, Mode, SafetyPolicy
from edgecache.errors import ConfigError

if TYPE_CHECKING:
    from keystoneauth1.session import Session

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
    cfg.IntOpt(
        "client_socket_timeout",
        default=60,
        min=1,
        help="Seconds a client connection may sit idle, or take to send a request's "
        "headers, before edgecache closes it (a slow-headers client, or thousands of "
        "idle connections, cannot hold the daemon's sockets). Running downloads are "
        "never cut by it; clients simply reconnect.",
    ),
]

#: How the daemon runs: its log and its stop (oslo.log's names for the log options).
service_opts = [
    cfg.BoolOpt(
        "debug",
        default=False,
        mutable=True,
        help="Log at DEBUG rather than INFO. Changes on SIGHUP (systemctl reload edgecache).",
    ),
    cfg.StrOpt(
        "log_file",
        help="Write the log to this file (reopened when logrotate moves it) rather than "
        "to stderr, which systemd passes to the journal.",
    ),
    cfg.StrOpt(
        "event_loop",
        default="uvloop",
        choices=[
            ("uvloop", "libuv's loop (uvloop): less CPU per request, so a proxied "
             "metadata GET waits less on a busy host"),
            ("asyncio", "Python's own selector loop"),
        ],
        help="The event loop the daemon runs on. Image bytes never pass through it "
        "(sender and fill threads move them); it answers requests and proxies the rest "
        "of the Glance API.",
    ),
    cfg.IntOpt(
        "shutdown_timeout",
        default=60,
        min=0,
        help="Seconds running downloads get to finish after SIGTERM, once the listening "
        "socket is closed; the ones still running then are cut. Keep systemd's "
        "TimeoutStopSec above it (the shipped unit has 90 s).",
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
        mutable=True,
        help="Upper bound on the bytes of committed and in-progress images. The "
        "least recently used images are evicted to stay under it, and space is "
        "reserved before a fill starts. Suffixes K, M, G, T (binary) are accepted. "
        "Changes on SIGHUP; eviction down to a smaller bound follows at once. Fills "
        "also stay within the file system's free space, whatever this says.",
    ),
    cfg.IntOpt(
        "stall_time",
        default=86400,
        min=1,
        help="Seconds without progress after which an incomplete fill is abandoned "
        "and its partial file removed.",
    ),
    cfg.FloatOpt(
        "failure_cooldown",
        default=30.0,
        min=0,
        help="Seconds after a fill ends with wrong bytes (they do not match Glance's "
        "hash, or the body is shorter or longer than the image's size even after "
        "max_resume_attempts resumes) during which no new fill of the same image "
        "starts: callers get 503 with Retry-After instead, so a corrupt image is not "
        "downloaded again by every request. A refusal of one caller (401/403), a "
        "refused connection or a stall never starts a cool-down. 0 turns it off. "
        "Related options: verify, [upstream] max_resume_attempts.",
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
    cfg.StrOpt(
        "http_proxy",
        help="URL of an HTTP proxy (http://host:port) that image-data downloads "
        "(GET /v2/images/{id}/file, and their Range resumes) go through, for example "
        "a P2P distribution agent on this host such as Dragonfly's dfdaemon. Metadata "
        "and every other call go straight to Glance. A proxy that refuses the "
        "connection is bypassed for that download. Unset: no proxy.",
    ),
    cfg.BoolOpt(
        "direct_stores",
        default=False,
        help="Read image bytes straight from the store locations Glance shows the "
        "caller (the image's 'locations' with Glance's show_multiple_locations, or "
        "'direct_url'), instead of from GET /v2/images/{id}/file. Readable here: "
        "file:// (a Glance file store mounted on this host at the same path), "
        "http(s)://, and s3:// / s3+http(s):// when the 's3' extra (aiobotocore) is "
        "installed (credentials from the URL as Glance writes it, else botocore's "
        "usual chain), and swift:// / swift+http(s)://. Metadata and authorization "
        "still come from Glance; an image whose locations cannot be read, or that has "
        "no hash (os_hash_value or checksum) to verify store bytes against, is fetched "
        "from Glance as usual; with [cache] verify = false every image is. Only places "
        "under direct_store_allow are ever contacted. Related options: "
        "direct_store_allow.",
    ),
    cfg.ListOpt(
        "direct_store_allow",
        default=[],
        help="URL prefixes direct store reads (direct_stores) may open, for example "
        "file:///var/lib/glance/images/, https://swift.example.com:8080/v1/AUTH_glance/, "
        "http://s3.example.com:9000/images/. Each URL edgecache would contact is "
        "compared with them: scheme, host and port (default ports made explicit) "
        "equal, and its path under the prefix's path at a '/' boundary. file:// "
        "locations are compared by their real path (symlinks resolved); s3 locations "
        "by their path-style object URL http(s)://HOST[:PORT]/BUCKET/KEY (s3:// and "
        "s3+http:// are http); swift locations by the object URL they are read from "
        "(and the auth address, for v1 credentials). Prefixes with user information, "
        "a query or dot segments are refused at start. A location outside every "
        "prefix, a store answering with a redirect (never followed), or a Swift "
        "location that would carry the [upstream_auth] token to a host that is not an "
        "object-store endpoint of its own catalog is not contacted: the image is read "
        "from Glance's /file and edgecache_upstream_errors_total{reason="
        "\"store_refused\"} counts it. Empty (the default): nothing is read directly, "
        "even with direct_stores = true.",
    ),
    cfg.BoolOpt(
        "serve_cached_on_upstream_failure",
        default=False,
        help="While no Glance endpoint answers, serve a cached image to a caller whose "
        "token Glance authorized for that very image within offline_auth_ttl (in "
        "keystone mode the token must also still validate). Everyone else gets 503 "
        "before any body, as with false, so Nova retries.",
    ),
    cfg.IntOpt(
        "offline_auth_ttl",
        default=3600,
        min=0,
        help="Seconds an upstream 'this caller may read this image' answer keeps "
        "counting while upstream is unreachable (with serve_cached_on_upstream_failure).",
    ),
]

#: [cache] options of the scrubber (registered with the other [cache] options).
scrub_opts = [
    cfg.Opt(
        "scrub_rate",
        type=ByteSize(),
        default="50M",
        help="Bytes per second the background scrubber reads to re-hash committed "
        "images against the hash Glance recorded; an image that no longer matches is "
        "evicted and counted in edgecache_integrity_failures_total. 0 turns the "
        "scrubber off ('edgecache cache verify' still works). Suffixes K, M, G.",
    ),
    cfg.IntOpt(
        "scrub_interval",
        default=86400,
        min=1,
        help="Seconds between two scrubs of the same image (a fill's own verification "
        "counts as the first). With the default each image is re-read once a day.",
    ),
]

prefetch_opts = [
    cfg.IntOpt(
        "workers",
        default=2,
        min=1,
        help="Images prefetched at the same time from the queue that PUT /v2/cache/{id}, "
        "'glance cache-queue' and 'edgecache cache queue' fill.",
    ),
    cfg.Opt(
        "max_rate",
        type=ByteSize(),
        default="0",
        help="Bytes per second all prefetches together may read from upstream (for "
        "example 20M); 0 means no cap. A client that asks for an image being "
        "prefetched joins that fill, which from then on reads at full speed.",
    ),
]

cache_api_opts: list[cfg.Opt] = [
    cfg.ListOpt(
        "admin_roles",
        default=["admin"],
        help="Keystone roles allowed to use the cache-management API (/v2/cache, "
        "/v2/cached_images, /v2/queued_images), like Glance's admin-only cache_* "
        "policies: the roles of the caller's validated token decide. With "
        "auth_strategy = noauth every caller is an administrator, as in Glance.",
    ),
]

image_safety_opts: list[cfg.Opt] = [
    cfg.StrOpt(
        "mode",
        default="enforce",
        choices=[
            ("enforce", "refuse unsafe images (403) and keep them out of the cache"),
            ("log", "serve them, but count and log what enforce would refuse"),
            ("off", "inspect nothing"),
        ],
        help="What to do with an image whose content oslo.utils' format inspector (the "
        "one Nova and Glance use) finds unsafe or not its disk_format: a qcow2 with a "
        "backing file or an external data file, a VMDK of a create type not in "
        "vmdk_allowed_types, content of another format than the record's disk_format "
        "(GPT and ISO content may be labelled raw, as in Nova), a disk_format the "
        "inspector cannot read (ami, aki and ari aside), or any failed safety check. "
        "The verdict comes from the first bytes of a fill for most formats, before any "
        "header is sent; a refused image answers 403 and is never cached. Counted in "
        "edgecache_image_safety_rejections_total{reason}.",
    ),
    cfg.ListOpt(
        "vmdk_allowed_types",
        default=list(DEFAULT_VMDK_TYPES),
        help="VMDK create types that may be served (Nova's [compute] vmdk_allowed_types "
        "default). Types that name other files (monolithicFlat, twoGbMaxExtent*) can "
        "point a hypervisor at host files: keep them out.",
    ),
    cfg.BoolOpt(
        "verify_signatures",
        default=False,
        help="Verify Glance image signatures (img_signature, img_signature_hash_method, "
        "img_signature_key_type, img_signature_certificate_uuid) as Nova does with "
        "[glance] verify_glance_signatures: the certificate comes from the key manager "
        "castellan's [key_manager] and [barbican] options name, asked with the token of "
        "the caller who starts the fill; the bytes are checked in the same pass as the "
        "hash, before the last byte. A bad or unverifiable signature is refused like an "
        "unsafe image (403, never cached); mode = log serves it and counts it.",
    ),
    cfg.BoolOpt(
        "require_signatures",
        default=False,
        help="With verify_signatures, refuse images that carry no signature.",
    ),
]

#: [upstream_auth]: keystoneauth1's own options, for the credentials prefetches use in
#: keystone mode (the password plugin's options are shown in the sample).
UPSTREAM_AUTH_GROUP = "upstream_auth"


def _upstream_auth_opts() -> list[cfg.Opt]:
    from keystoneauth1 import loading as ks_loading

    opts: list[cfg.Opt] = []
    seen: set[str] = set()
    for opt in (
        ks_loading.get_session_conf_options()
        + ks_loading.get_auth_common_conf_options()
        + ks_loading.get_auth_plugin_conf_options("password")
    ):
        if opt.dest not in seen:
            seen.add(opt.dest)
            opts.append(opt)
    return opts

_GROUPS: list[tuple[str | None, list[cfg.Opt]]] = [
    (None, default_opts),
    (None, service_opts),
    ("cache", cache_opts),
    ("upstream", upstream_opts),
    ("cache", scrub_opts),
    ("prefetch", prefetch_opts),
    ("cache_api", cache_api_opts),
    ("image_safety", image_safety_opts),
]


def list_opts() -> list[tuple[str | None, list[cfg.Opt]]]:
    """The options for oslo-config-generator (entry point ``oslo.config.opts``)."""
    return [(group, list(opts)) for group, opts in _GROUPS] + [
        (UPSTREAM_AUTH_GROUP, _upstream_auth_opts())
    ]


@dataclass(frozen=True)
class CacheSettings:
    directory: str
    max_size: int
    stall_time: float = 86400.0
    failure_cooldown: float = 30.0
    verify: bool = True
    scrub_rate: int = 50 << 20
    scrub_interval: float = 86400.0


@dataclass(frozen=True)
class UpstreamSettings:
    glance_endpoints: tuple[str, ...]
    auth_cache_ttl: float = 60.0
    max_resume_attempts: int = 5
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    serve_cached_on_upstream_failure: bool = False
    offline_auth_ttl: float = 3600.0
    #: proxy for image-data downloads, or None
    http_proxy: str | None = None
    #: read image bytes from the store locations in Glance's records
    direct_stores: bool = False
    #: URL prefixes those reads may open (empty: none)
    direct_store_allow: tuple[str, ...] = ()


@dataclass(frozen=True)
class PrefetchSettings:
    workers: int = 2
    max_rate: int = 0
    #: a keystoneauth1 session holding the [upstream_auth] credentials (keystone mode),
    #: or None: prefetches then send no token (noauth)
    upstream_auth: Session | None = None


@dataclass(frozen=True)
class CacheApiSettings:
    admin_roles: tuple[str, ...] = ("admin",)


@dataclass(frozen=True)
class Settings:
    cache: CacheSettings
    upstream: UpstreamSettings
    prefetch: PrefetchSettings = PrefetchSettings()
    cache_api: CacheApiSettings = CacheApiSettings()
    image_safety: SafetyPolicy = dataclasses.field(default_factory=SafetyPolicy)
    #: the parsed configuration, for castellan's [key_manager] and [barbican] (read by
    #: castellan itself) when signatures are verified
    key_manager_conf: cfg.ConfigOpts | None = dataclasses.field(
        default=None, compare=False, repr=False
    )
    bind_host: str = "127.0.0.1"
    bind_port: int = 9292
    auth_strategy: str = "noauth"
    client_socket_timeout: float = 60.0
    #: the parsed configuration, for keystonemiddleware's [keystone_authtoken]
    #: (auth_strategy = keystone), which reads its own options from it
    keystone_conf: cfg.ConfigOpts | None = dataclasses.field(
        default=None, compare=False, repr=False
    )
    debug: bool = False
    log_file: str | None = None
    shutdown_timeout: float = 60.0
    event_loop: str = "asyncio"


@dataclass(frozen=True)
class LiveSettings:
    """The options a reload (SIGHUP) applies to the running daemon."""

    max_size: int
    debug: bool


def live_settings(conf: cfg.ConfigOpts) -> LiveSettings:
    """The mutable options' values now (after ``conf.mutate_config_files()``)."""
    try:
        return LiveSettings(max_size=conf.cache.max_size, debug=conf.debug)
    except cfg.ConfigFileValueError as exc:  # values are converted when read
        raise ConfigError(_plain_value_error(exc)) from exc


def register(conf: cfg.ConfigOpts) -> None:
    for group, opts in _GROUPS:
        conf.register_opts(opts, group=group)
    _register_upstream_auth(conf)


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
        return _with_operator_settings(conf, _settings_from(conf))
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
    http_proxy = (conf.upstream.http_proxy or "").strip() or None
    if http_proxy is not None and not re.match(r"^https?://[^/]+/?$", http_proxy):
        raise ConfigError(
            f"[upstream] http_proxy: {http_proxy!r} is not a proxy URL (http://host:port)"
        )
    settings = Settings(
        bind_host=conf.bind_host,
        bind_port=conf.bind_port,
        auth_strategy=conf.auth_strategy,
        client_socket_timeout=float(conf.client_socket_timeout),
        keystone_conf=conf if conf.auth_strategy == "keystone" else None,
        debug=conf.debug,
        log_file=conf.log_file or None,
        shutdown_timeout=float(conf.shutdown_timeout),
        event_loop=conf.event_loop,
        cache=CacheSettings(
            directory=conf.cache.directory,
            max_size=conf.cache.max_size,
            stall_time=float(conf.cache.stall_time),
            failure_cooldown=float(conf.cache.failure_cooldown),
            verify=conf.cache.verify,
        ),
        upstream=UpstreamSettings(
            glance_endpoints=endpoints,
            auth_cache_ttl=float(conf.upstream.auth_cache_ttl),
            max_resume_attempts=conf.upstream.max_resume_attempts,
            connect_timeout=conf.upstream.connect_timeout,
            read_timeout=conf.upstream.read_timeout,
            serve_cached_on_upstream_failure=conf.upstream.serve_cached_on_upstream_failure,
            offline_auth_ttl=float(conf.upstream.offline_auth_ttl),
            http_proxy=http_proxy,
            direct_stores=conf.upstream.direct_stores,
            direct_store_allow=_direct_store_allow(conf.upstream.direct_store_allow),
        ),
    )
    if settings.auth_strategy == "keystone":
        _check_keystone_authtoken(conf)
    return settings


def _direct_store_allow(prefixes: Sequence[str]) -> tuple[str, ...]:
    """The [upstream] direct_store_allow prefixes, each checked to be a plain URL prefix."""
    from edgecache.upstream.stores.allow import StoreAllowlist

    return StoreAllowlist(prefixes).entries  # ConfigError for a prefix it cannot use


def _check_keystone_authtoken(conf: cfg.ConfigOpts) -> None:
    """[keystone_authtoken] must hold a usable auth plugin: it is how tokens get validated.

    Keystone mode never runs open, nor half-configured: an auth_type keystoneauth1
    does not know, a plugin without its required options (auth_url, ...), or a
    password plugin without a user and password stop the daemon here, by name,
    instead of answering every caller 503 (or worse) later. Nothing is sent to
    Keystone: the plugin is only loaded.
    """
    from keystoneauth1 import exceptions as ks_exceptions
    from keystoneauth1 import loading as ks_loading
    from keystonemiddleware import auth_token

    for group, opts in auth_token.list_opts():
        conf.register_opts(opts, group=group)
    section = conf.keystone_authtoken.auth_section or "keystone_authtoken"
    if not conf.keystone_authtoken.auth_type and not conf.keystone_authtoken.auth_section:
        raise ConfigError(
            "auth_strategy = keystone needs [keystone_authtoken] auth_type (for example "
            "password, with auth_url, username, password, project_name, ...), as for Glance"
        )
    try:
        plugin = ks_loading.load_auth_from_conf_options(conf, "keystone_authtoken")
    except (ks_exceptions.ClientException, cfg.Error) as exc:
        raise ConfigError(f"auth_strategy = keystone: [{section}]: {exc}") from exc
    if plugin is None:
        raise ConfigError(f"auth_strategy = keystone: [{section}] names no auth_type")
    options = conf[section]
    names = {opt.dest for opt in ks_loading.get_plugin_options(options.auth_type)}
    if "password" in names and not (
        options.password and (options.get("username") or options.get("user_id"))
    ):
        raise ConfigError(
            f"auth_strategy = keystone: [{section}] auth_type = {options.auth_type} needs "
            "username (or user_id) and password: without them no token can be validated"
        )


def _register_upstream_auth(conf: cfg.ConfigOpts) -> None:
    from keystoneauth1 import loading as ks_loading

    ks_loading.register_session_conf_options(conf, UPSTREAM_AUTH_GROUP)
    ks_loading.register_auth_conf_options(conf, UPSTREAM_AUTH_GROUP)


def _with_operator_settings(conf: cfg.ConfigOpts, settings: Settings) -> Settings:
    """Add the scrubber, prefetch and cache-API settings."""
    return dataclasses.replace(
        settings,
        cache=dataclasses.replace(
            settings.cache,
            scrub_rate=conf.cache.scrub_rate,
            scrub_interval=float(conf.cache.scrub_interval),
        ),
        prefetch=PrefetchSettings(
            workers=conf.prefetch.workers,
            max_rate=conf.prefetch.max_rate,
            upstream_auth=(
                _upstream_auth_session(conf) if settings.auth_strategy == "keystone" else None
            ),
        ),
        cache_api=CacheApiSettings(
            admin_roles=tuple(r.strip() for r in conf.cache_api.admin_roles if r.strip()),
        ),
        image_safety=SafetyPolicy(
            mode=Mode(conf.image_safety.mode),
            vmdk_allowed_types=tuple(
                t.strip() for t in conf.image_safety.vmdk_allowed_types if t.strip()
            ),
            verify_signatures=conf.image_safety.verify_signatures,
            require_signatures=conf.image_safety.require_signatures,
        ),
        key_manager_conf=conf if conf.image_safety.verify_signatures else None,
    )


def _upstream_auth_session(conf: cfg.ConfigOpts) -> Session | None:
    """keystoneauth1 conf loading of [upstream_auth]; None when no auth_type is set.

    Nothing is sent to Keystone here: the session asks for a token when a
    prefetch first needs one, and renews it before it expires.
    """
    from keystoneauth1 import exceptions as ks_exceptions
    from keystoneauth1 import loading as ks_loading

    try:
        plugin = ks_loading.load_auth_from_conf_options(conf, UPSTREAM_AUTH_GROUP)
    except ks_exceptions.ClientException as exc:
        raise ConfigError(f"[{UPSTREAM_AUTH_GROUP}]: {exc}") from exc
    if plugin is None:
        return None
    session: Session = ks_loading.load_session_from_conf_options(
        conf, UPSTREAM_AUTH_GROUP, auth=plugin
    )
    return session
