"""Provision and run a real Glance API on 127.0.0.1.

The demo command, the integration tests and the benchmarks need an actual Glance
upstream rather than a fake, so that edgecache is exercised against the real
protocol quirks (close-delimited cache-miss bodies, 204 for queued images, ...).

Glance pins far too many packages to share edgecache's environment, so it gets a
virtualenv of its own (:func:`ensure_glance_venv`).  :class:`LocalGlance` then writes a
throw-away configuration (sqlite database, file store, no authentication) and runs
``glance.wsgi.api:application`` under uWSGI, because Glance 33 no longer ships a
standalone server.

Run ``python -m lab.glance [flavor [port]]`` for a Glance to poke at by hand.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import psutil

from lab.httpclient import Response, request
from lab.logs import say, tail, tails
from lab.polling import WaitTimeout, wait_until
from lab.ports import LOOPBACK
from lab.procs import alive, child_env, group_pids
from lab.units import MiB
from lab.uwsgi import UwsgiApp, UwsgiService, uwsgi_ini
from lab.venvs import VenvSpec, default_state_root, ensure_venv

__all__ = [
    "FLAVORS",
    "GLANCE_VENV",
    "GLANCE_VERSION",
    "GlanceHTTPError",
    "LocalGlance",
    "RequestRecord",
    "ensure_glance_venv",
    "oslo_value",
    "sha512_file",
]

GLANCE_VERSION = "33.0.0"
# A binary wheel, so that no compiler or Python headers are needed; it installs a
# ``uwsgi`` console script that runs the uWSGI master inside that Python process.
PYUWSGI_REQUIREMENT = "pyuwsgi>=2.0.28,<2.1"
# glance_store's swift driver needs it (its ``swift`` extra); only imported when a
# swift store is configured (:attr:`LocalGlance.swift_auth_address`).
SWIFTCLIENT_REQUIREMENT = "python-swiftclient>=3.2.0"
FLAVORS = ("", "caching", "cachemanagement")
GLANCE_VENV = VenvSpec(
    name="venv-glance",
    requirements=(f"glance=={GLANCE_VERSION}", PYUWSGI_REQUIREMENT, SWIFTCLIENT_REQUIREMENT),
    scripts=("uwsgi", "glance-manage"),
    only_binary=("pyuwsgi",),
)

_LOG_TAIL_LINES = 40
# Prefix of our request-log lines, so that stray output in the file is never counted.
_REQ_TAG = "EDGECACHE-REQ"
_REQ_LINE = re.compile(
    rf"^{_REQ_TAG} (?P<method>\S+) (?P<uri>\S+) (?P<status>\d+) (?P<size>\d+) (?P<msecs>\d+)"
    r"(?: (?P<range>.*))?$"
)
#: edgecache's ``download_image`` check: a one-byte ``GET /file`` (docs/behaviour.md)
_PROBE_RANGE = "bytes=0-0"


def ensure_glance_venv(root: Path) -> Path:
    """``root/venv-glance`` with Glance, pyuwsgi and swiftclient, built if needed."""
    return ensure_venv(root, GLANCE_VENV)


class RequestRecord(NamedTuple):
    """One line of uWSGI's request log."""

    method: str
    path: str  # without the query string
    query: str
    status: int
    size: int  # response body bytes actually sent
    msecs: int
    range: str | None = None  # the request's Range header, if it had one

    @property
    def is_download_probe(self) -> bool:
        """edgecache asking ``download_image`` (a one-byte GET), not reading data."""
        return self.method == "GET" and (self.range or "").replace(" ", "") == _PROBE_RANGE


class GlanceHTTPError(RuntimeError):
    """Glance answered with a status the helper did not expect."""

    def __init__(self, method: str, path: str, response: Response) -> None:
        text = response.body[:2000].decode("utf-8", "replace")
        super().__init__(f"{method} {path} -> {response.status}: {text}")
        self.status = response.status
        self.response = response


def oslo_value(value: object) -> str:
    """``value`` for an oslo.config file: it expands "$name", so a literal dollar is doubled."""
    return str(value).replace("$", "$$")



@dataclass
class LocalGlance(UwsgiService):
    """A Glance API under uWSGI on 127.0.0.1, with all its state below ``state_dir``.

    Authentication is off (the ``unauthenticated-context`` pipelines) and the
    policies that would need an admin role are opened, so every helper works
    without tokens.  Use as a context manager, or call :meth:`start` and
    :meth:`stop`.
    """

    state_dir: Path
    venv: Path
    port: int = 0
    flavor: str = ""
    processes: int = 2
    threads: int = 4
    close_connections: bool = False
    show_multiple_locations: bool = False
    #: when set, images are stored in Swift (single tenant, container ``glance``) as
    #: ``swift_user`` (``project:user``) / ``swift_key`` instead of in files. glance_store
    #: 5.7 only accepts ``swift_store_auth_version = 3``: this address must answer
    #: Keystone v3 password authentication (``POST .../auth/tokens``).
    swift_auth_address: str | None = None
    swift_user: str | None = None
    swift_key: str | None = None
    #: extra rules for ``[oslo_policy] policy_file`` (rule name -> oslo.policy check string),
    #: written over the defaults; e.g. Glance's documented "restricted download":
    #: ``{"download_image": "role:admin or rule:restricted",
    #: "restricted": "not ('secret':%(x_test_key)s and role:member)"}``
    policy_rules: Mapping[str, str] = field(default_factory=dict)
    _server: UwsgiApp | None = field(default=None, init=False, repr=False)
    _master: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {FLAVORS!r}, not {self.flavor!r}")
        self.state_dir = Path(self.state_dir).resolve()
        self.venv = Path(self.venv).resolve()

    # -- paths ----------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def api_log(self) -> Path:
        return self.log_dir / "glance-api.log"

    @property
    def request_log_path(self) -> Path:
        return self.log_dir / "requests.log"

    @property
    def _ini(self) -> Path:
        return self.etc_dir / "glance-uwsgi.ini"

    # -- state ----------------------------------------------------------------
    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the uWSGI log and of Glance's own log, for error messages."""
        return tails([self.uwsgi_log, self.api_log], lines)

    # -- configuration ----------------------------------------------------------
    def _store_options(self) -> str:
        if self.swift_auth_address is None:
            return "stores = file\ndefault_store = file"
        if not (self.swift_user and self.swift_key):
            raise ValueError("a swift store needs swift_user and swift_key")
        return "\n".join(
            [
                "stores = file,swift",
                "default_store = swift",
                "swift_store_auth_version = 3",
                f"swift_store_auth_address = {oslo_value(self.swift_auth_address)}",
                f"swift_store_user = {oslo_value(self.swift_user)}",
                f"swift_store_key = {oslo_value(self.swift_key)}",
                "swift_store_container = glance",
                "swift_store_create_container_on_put = true",
            ]
        )

    def _write_config(self) -> None:
        for sub in (
            self.etc_dir,
            self.log_dir,
            self.run_dir,
            self.data_dir / "images",
            self.data_dir / "cache",
            self.data_dir / "staging",
        ):
            sub.mkdir(parents=True, exist_ok=True)
        etc, data = self.etc_dir, self.data_dir

        # Always set worker_self_reference_url: the cache flavors refuse to load
        # without it (centralized_db cache driver), and it is harmless otherwise.
        (etc / "glance-api.conf").write_text(
            f"""\
[DEFAULT]
image_cache_dir = {oslo_value(data / "cache")}
image_cache_driver = centralized_db
image_cache_max_size = 10737418240
worker_self_reference_url = {self.url}
enabled_import_methods = []
node_staging_uri = file://{oslo_value(data / "staging")}
show_multiple_locations = {self.show_multiple_locations}
log_file = {oslo_value(self.api_log)}
debug = false

[database]
connection = sqlite:///{oslo_value(data / "glance.sqlite")}

[glance_store]
{self._store_options()}
filesystem_store_datadir = {oslo_value(data / "images")}

[paste_deploy]
flavor = {self.flavor}
config_file = {oslo_value(etc / "glance-api-paste.ini")}

[oslo_policy]
policy_file = {oslo_value(etc / "policy.yaml")}
enforce_new_defaults = false
enforce_scope = false

[oslo_concurrency]
lock_path = {oslo_value(self.run_dir)}
"""
        )

        paste_src = self.venv / "etc" / "glance" / "glance-api-paste.ini"
        if not paste_src.is_file():
            raise RuntimeError(f"{paste_src} is missing: is {self.venv} a Glance venv?")
        paste = re.sub(
            r"(?m)^disable_by_file_path\s*=.*$",
            f"disable_by_file_path = {self.run_dir / 'healthcheck_disable'}",
            paste_src.read_text(),
        )
        (etc / "glance-api-paste.ini").write_text(paste)

        # The unauthenticated context is admin but carries no roles, so every rule
        # that asks for role:admin would answer 403; open those we use.
        opened = (
            "manage_image_cache",
            "cache_image",
            "cache_list",
            "cache_delete",
            "cache_clean",
            "cache_prune",
            "list_cached_nodes",
            "publicize_image",
            "communitize_image",
            "deactivate",
            "reactivate",
            "delete_image_location",
            "get_image_location",
            "set_image_location",
        )
        # Noauth requests are admin, and admins may still download deactivated
        # images; real users get 403, which is what callers of deactivate_image()
        # want to see, so the download rule refuses deactivated images.
        rules = {rule: "" for rule in opened}
        rules["download_image"] = "not 'deactivated':%(status)s"
        (etc / "policy.yaml").write_text(self.policy_lines(rules))

        if self.close_connections:
            # devstack's setup: faster cache misses, no keep-alive.
            socket_lines = f"http-socket = {LOOPBACK}:{self.port}\nadd-header = Connection: close\n"
        else:
            socket_lines = f"http11-socket = {LOOPBACK}:{self.port}\n"
        # Request lines go to their own file in a fixed format for count_requests().
        self._ini.write_text(uwsgi_ini(
            "glance.wsgi.api:application", socket_lines, self.processes, self.threads,
            f"""\
http-auto-chunked = true
http-chunked-input = true
http-raw-body = true
env = OS_GLANCE_CONFIG_DIR={etc}
pidfile = {self.pidfile}
logto = {self.uwsgi_log}
req-logger = file:{self.request_log_path}
log-format = {_REQ_TAG} %(method) %(uri) %(status) %(size) %(msecs) %(var.HTTP_RANGE)
""",
        ))

    def policy_lines(self, base: Mapping[str, str] | None = None) -> str:
        """``base`` with :attr:`policy_rules` over it, as policy.yaml (JSON strings are YAML)."""
        rules = {**(base or {}), **self.policy_rules}
        return "".join(f"{json.dumps(name)}: {json.dumps(rule)}\n"
                       for name, rule in rules.items())

    def _db_sync(self) -> None:
        """Create the schema once per state_dir (marker written after success)."""
        marker = self.data_dir / ".db-synced"
        if marker.is_file():
            return
        cmd = [
            str(self.venv / "bin" / "glance-manage"),
            "--config-dir",
            str(self.etc_dir),
            "--log-file",
            str(self.log_dir / "glance-manage.log"),
            "db_sync",
        ]
        done = subprocess.run(
            cmd,
            env=child_env(self.venv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            out = done.stdout.decode("utf-8", "replace").splitlines()[-_LOG_TAIL_LINES:]
            log = tail(self.log_dir / "glance-manage.log", _LOG_TAIL_LINES)
            raise RuntimeError(
                f"glance-manage db_sync failed (exit {done.returncode}):\n" + "\n".join(out + log)
            )
        marker.write_text("ok\n")

    # -- lifecycle --------------------------------------------------------------
    def _kill_stale(self) -> None:
        """Stop a uWSGI left behind by an earlier run that used this state_dir."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        try:
            cmdline = psutil.Process(pid).cmdline()
        except psutil.Error:
            cmdline = []
        # Only ours if its command line names our ini file (pids get reused).
        if alive(pid) and str(self._ini) in cmdline:
            say("lab.glance", f"stopping stale uWSGI {pid} from {self.state_dir}")
            with contextlib.suppress(psutil.Error):
                for member in group_pids(pid):
                    psutil.Process(member).kill()
            with contextlib.suppress(WaitTimeout):
                wait_until(lambda: not alive(pid), f"stale uWSGI {pid} to exit", 5)
        self.pidfile.unlink(missing_ok=True)

    def start(self, timeout: float = 60) -> None:
        """Write the configuration, create the database and run uWSGI until it serves.

        Raises an error with the log tail when uWSGI exits, answers 500 (the app
        failed to load) or is not ready within ``timeout`` seconds. On a port
        picked here that someone else took meanwhile, it retries on another.
        """
        def start_on(port: int, deadline: float) -> None:
            self.port = port
            self._write_config()
            self._db_sync()
            self._kill_stale()
            env = child_env(self.venv)
            # pyuwsgi runs inside an already started Python, so the ini's env= comes
            # too late for Glance's config loader: export it here.
            env["OS_GLANCE_CONFIG_DIR"] = str(self.etc_dir)
            server = UwsgiApp(
                self.venv, self._ini, port=port, processes=self.processes, probe_path="/",
                ready_status=300, log=self.uwsgi_log, name=f"Glance at {self.url}", env=env,
                cwd=self.state_dir, extra_logs=(self.api_log,),
            )
            self._serve(server, deadline - time.monotonic())

        self._launch(timeout, "ensure_glance_venv", start_on)

    # -- HTTP helpers -----------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: bytes | IO[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 120,
    ) -> Response:
        """One request on a fresh connection; the whole body is read into memory."""
        return request(self.port, method, path, body, headers, timeout)

    def _expect(self, method: str, path: str, ok: tuple[int, ...], **kw: Any) -> Response:
        resp = self.request(method, path, **kw)
        if resp.status not in ok:
            raise GlanceHTTPError(method, path, resp)
        return resp

    def _post_image(self, name: str, properties: Mapping[str, str]) -> dict[str, Any]:
        doc = {"name": name, "disk_format": "raw", "container_format": "bare", **properties}
        resp = self._expect(
            "POST",
            "/v2/images",
            (201,),
            body=json.dumps(doc).encode(),
            headers={"Content-Type": "application/json"},
        )
        image: dict[str, Any] = resp.json()
        return image

    def get_image(self, image_id: str) -> dict[str, Any]:
        image: dict[str, Any] = self._expect("GET", f"/v2/images/{image_id}", (200,)).json()
        return image

    def create_image(
        self, data: bytes | Path, name: str = "test", **properties: str
    ) -> dict[str, object]:
        """Create an active raw image holding ``data`` and return its metadata.

        A Path is streamed from disk with an explicit Content-Length: chunked
        uploads fail under uWSGI, and multi-GiB images must not be read into memory.
        """
        image_id = self._post_image(name, properties)["id"]
        path = f"/v2/images/{image_id}/file"
        # No "Expect: 100-continue" (http.client never sends it): uWSGI does not
        # answer it, so clients that send it stall for a second per upload.
        headers = {"Content-Type": "application/octet-stream"}
        if isinstance(data, Path):
            headers["Content-Length"] = str(data.stat().st_size)
            with data.open("rb") as fh:
                self._expect("PUT", path, (204,), body=fh, headers=headers, timeout=600)
        else:
            headers["Content-Length"] = str(len(data))
            self._expect("PUT", path, (204,), body=data, headers=headers, timeout=600)
        image = self.get_image(image_id)
        if image.get("status") != "active":
            raise RuntimeError(f"image {image_id} is {image.get('status')!r} after upload")
        return dict(image)

    def create_queued_image(self, name: str = "queued") -> dict[str, object]:
        """An image record without data (status ``queued``; its /file answers 204)."""
        return dict(self._post_image(name, {}))

    def delete_image(self, image_id: str) -> None:
        self._expect("DELETE", f"/v2/images/{image_id}", (204,))

    def deactivate_image(self, image_id: str) -> None:
        """Make the image's data unavailable (its /file answers 403) but keep the record."""
        self._expect("POST", f"/v2/images/{image_id}/actions/deactivate", (204,))

    def reactivate_image(self, image_id: str) -> None:
        self._expect("POST", f"/v2/images/{image_id}/actions/reactivate", (204,))

    # -- request log ------------------------------------------------------------
    def request_log(self) -> list[RequestRecord]:
        """Every request uWSGI has logged for this state_dir, oldest first.

        uWSGI writes a line when a request *finishes*, i.e. after the last body
        byte was handed to the socket: a client can have its whole response
        before the line exists.  A trailing line without newline is still being
        written and is skipped.
        """
        try:
            raw = self.request_log_path.read_bytes()
        except FileNotFoundError:
            return []
        records = []
        for line in raw.decode("utf-8", "replace").split("\n")[:-1]:
            m = _REQ_LINE.match(line.rstrip("\r"))
            if m is None:
                continue
            uri_path, _, query = m["uri"].partition("?")
            sent_range = (m["range"] or "").strip()
            records.append(
                RequestRecord(
                    m["method"], uri_path, query, int(m["status"]), int(m["size"]), int(m["msecs"]),
                    sent_range if sent_range not in ("", "-") else None,
                )
            )
        return records

    def count_requests(
        self, method: str, path: str, *, at_least: int | None = None, timeout: float = 5.0
    ) -> int:
        """How many ``method path`` requests (query string ignored) Glance has finished,
        edgecache's download checks aside (:attr:`RequestRecord.is_download_probe`: they
        read no data, and the counts mean data GETs).

        Because log lines appear only when a request is complete, pass ``at_least``
        to poll up to ``timeout`` seconds for that many; the count is returned
        either way (it may be higher, never waits for a lower one).
        """
        method = method.upper()

        def count() -> int:
            return sum(1 for r in self.request_log()
                       if r.method == method and r.path == path and not r.is_download_probe)

        if at_least is not None:
            with contextlib.suppress(WaitTimeout):
                wait_until(lambda: count() >= at_least, f"{at_least} {method} {path}", timeout)
        return count()


def sha512_file(path: Path) -> str:
    """Hex sha512 of a file, as Glance reports it in ``os_hash_value``."""
    digest = hashlib.sha512()
    with path.open("rb") as fh:
        while chunk := fh.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def _main(argv: list[str]) -> int:
    flavor = argv[0] if argv else ""
    port = int(argv[1]) if len(argv) > 1 else 9292
    root = default_state_root()
    venv = ensure_glance_venv(root)
    with LocalGlance(root / "glance-manual", venv, port=port, flavor=flavor) as glance:
        say("lab.glance", f"Glance {GLANCE_VERSION} (flavor {flavor!r}) at {glance.url}; "
            "Ctrl-C stops it")
        with contextlib.suppress(KeyboardInterrupt):
            while glance.running:
                time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
