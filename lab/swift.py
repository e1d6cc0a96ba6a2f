"""Provision and run a real single-node Swift on 127.0.0.1 (the published ``swift`` package).

Swift gets a virtualenv of its own under :func:`~lab.glance.default_state_root`
(:func:`ensure_swift_venv`), like Glance. :class:`LocalSwift` writes a throw-away
configuration under its state directory (``swift.conf``, one-replica account,
container and object rings, one device directory with ``mount_check = false``)
and runs the four servers in the foreground (``workers = 0``), each in a process
of its own, stopped by pid. The proxy authenticates with ``tempauth``: one user,
``test:tester`` / ``testing``, whose account is ``AUTH_test``. Given a
:class:`KeystoneAuth`, it authenticates with Keystone instead: keystonemiddleware's
``authtoken`` validates the token and Swift's ``keystoneauth`` grants a project's
``AUTH_<project id>`` account to its ``admin`` and ``member`` users.

Swift reads ``/etc/swift/swift.conf`` unless told otherwise, so each server is
started through a two-line shim that points ``swift_dir`` at the state directory
before running the server's WSGI app.

Standard library only, like :mod:`lab.glance`.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from lab.glance import _alive, _child_env, _file_lock, _run_logged, _say, free_port

SWIFT_VERSION = "2.38.3"
#: for the keystone mode's ``authtoken`` filter (Swift does not depend on it)
KEYSTONEMIDDLEWARE_VERSION = "13.0.1"
USER = "test:tester"
KEY = "testing"

_VENV_NAME = "venv-swift"
_READY_MARKER = ".edgecache-ready"
_SERVERS = ("account", "container", "object", "proxy")
_SHIM = (
    "import sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from swift.common import utils\n"
    "utils.set_swift_dir(sys.argv[1])\n"
    "from swift.common.wsgi import run_wsgi\n"
    "sys.exit(run_wsgi(sys.argv[2], sys.argv[3], verbose=True))\n"
)
# tempauth keeps its tokens in ``swift.cache``; with one proxy process a dict will do,
# so no memcached is needed.
_CACHE_MODULE = """\
import time as _time


class DictCache:
    def __init__(self):
        self._items = {}

    def get(self, key, **_kw):
        value, expires = self._items.get(key, (None, 0))
        if expires and expires < _time.time():
            self._items.pop(key, None)
            return None
        return value

    def set(self, key, value, serialize=True, time=0, **_kw):
        self._items[key] = (value, _time.time() + time if time else 0)

    def delete(self, key, **_kw):
        self._items.pop(key, None)

    def incr(self, key, delta=1, time=0, **_kw):
        value = int(self.get(key) or 0) + delta
        self.set(key, value, time=time)
        return value


def filter_factory(global_conf, **local_conf):
    cache = DictCache()

    def wrap(app):
        def middleware(env, start_response):
            env['swift.cache'] = cache
            return app(env, start_response)
        return middleware
    return wrap
"""
_RINGS = (
    "import sys\n"
    "from swift.common.ring import RingBuilder\n"
    "etc = sys.argv[1]\n"
    "for kind, port in zip(('account', 'container', 'object'), sys.argv[2:]):\n"
    "    builder = RingBuilder(6, 1, 1)\n"
    "    builder.add_dev({'region': 1, 'zone': 1, 'ip': '127.0.0.1', 'port': int(port),\n"
    "                     'device': 'd1', 'weight': 100})\n"
    "    builder.rebalance()\n"
    "    builder.save(f'{etc}/{kind}.builder')\n"
    "    builder.get_ring().save(f'{etc}/{kind}.ring.gz')\n"
)


def _venv_stamp() -> str:
    major, minor = sys.version_info[:2]
    return f"swift=={SWIFT_VERSION} keystonemiddleware=={KEYSTONEMIDDLEWARE_VERSION} " \
        f"python{major}.{minor}\n"


def ensure_swift_venv(root: Path) -> Path:
    """Return ``root/venv-swift`` with Swift (and keystonemiddleware) from PyPI, creating it
    if needed."""
    root = Path(root).resolve()
    venv = root / _VENV_NAME

    def ready() -> bool:
        marker = venv / _READY_MARKER
        return marker.is_file() and marker.read_text() == _venv_stamp() \
            and (venv / "bin" / "python").exists()

    if ready():
        return venv
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{_VENV_NAME}.lock"):
        if ready():
            return venv
        started = time.monotonic()
        if venv.exists():
            shutil.rmtree(venv)
        _run_logged([sys.executable, "-m", "venv", str(venv)], _child_env(), "venv creation")
        _say(f"installing swift=={SWIFT_VERSION} and keystonemiddleware (takes ~15-40 s)")
        _run_logged(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off",
             f"swift=={SWIFT_VERSION}", f"keystonemiddleware=={KEYSTONEMIDDLEWARE_VERSION}"],
            _child_env(venv),
            "pip install of swift",
        )
        (venv / _READY_MARKER).write_text(_venv_stamp())
        _say(f"{venv} ready in {time.monotonic() - started:.1f} s")
    return venv


@dataclass(frozen=True)
class KeystoneAuth:
    """Keystone mode: the v3 auth URL and a user holding ``admin`` on its project.

    The proxy's ``authtoken`` validates tokens as this user, and
    :meth:`LocalSwift.authenticate` issues its project-scoped tokens.
    """

    auth_url: str
    username: str
    password: str
    project_name: str


class LocalSwift:
    """A one-replica Swift (proxy with tempauth or Keystone, account, container, object)
    on 127.0.0.1."""

    def __init__(self, state_dir: Path, venv: Path, keystone: KeystoneAuth | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.venv = Path(venv)
        self.keystone = keystone
        self.etc = self.state_dir / "etc"
        self.devices = self.state_dir / "srv"
        self.logs = self.state_dir / "log"
        self.ports = {name: free_port() for name in _SERVERS}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """The proxy's base URL."""
        return f"http://127.0.0.1:{self.ports['proxy']}"

    @property
    def auth_url(self) -> str:
        """The tempauth v1 endpoint."""
        return f"{self.url}/auth/v1.0"

    @property
    def storage_url(self) -> str:
        """The storage URL of the tempauth user's account (tempauth mode)."""
        return f"{self.url}/v1/AUTH_test"

    def storage_url_of(self, project_id: str) -> str:
        """The storage URL of a Keystone project's account (keystone mode)."""
        return f"{self.url}/v1/AUTH_{project_id}"

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs.values() if _alive(p.pid)]

    # ------------------------------------------------------------------ setup

    def _write_config(self) -> None:
        for path in (self.etc, self.devices / "d1", self.logs, self.state_dir / "run"):
            path.mkdir(parents=True, exist_ok=True)
        (self.etc / "swift.conf").write_text(
            "[swift-hash]\nswift_hash_path_suffix = edgecache\nswift_hash_path_prefix = tests\n"
            "[storage-policy:0]\nname = gold\ndefault = yes\n"
        )
        common = (
            "[DEFAULT]\n"
            "bind_ip = 127.0.0.1\n"
            "bind_port = {port}\n"
            "workers = 0\n"
            f"swift_dir = {self.etc}\n"
            f"devices = {self.devices}\n"
            "mount_check = false\n"
            "log_level = WARNING\n"
            "log_name = {name}\n"
            "log_udp_host = \n"
        )
        for name in ("account", "container", "object"):
            (self.etc / f"{name}-server.conf").write_text(
                common.format(port=self.ports[name], name=name)
                + f"[pipeline:main]\npipeline = {name}-server\n"
                + f"[app:{name}-server]\nuse = egg:swift#{name}\n"
                + ("allow_versions = true\n" if name == "container" else "")
            )
        auth = "authtoken keystoneauth" if self.keystone else "tempauth"
        (self.etc / "proxy-server.conf").write_text(
            common.format(port=self.ports["proxy"], name="proxy")
            + f"[pipeline:main]\npipeline = catch_errors cache {auth} proxy-server\n"
            + "[app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\n"
            + "[filter:catch_errors]\nuse = egg:swift#catch_errors\n"
            + "[filter:cache]\nuse = call:edgecache_swift_cache:filter_factory\n"
            + self._auth_filters()
        )
        (self.etc / "edgecache_swift_cache.py").write_text(_CACHE_MODULE)
        _run_logged(
            [str(self.venv / "bin" / "python"), "-c", _RINGS, str(self.etc),
             *(str(self.ports[n]) for n in ("account", "container", "object"))],
            _child_env(self.venv),
            "swift ring build",
        )

    def _auth_filters(self) -> str:
        ks = self.keystone
        if ks is None:
            return f"[filter:tempauth]\nuse = egg:swift#tempauth\nuser_test_tester = {KEY} .admin\n"
        # delay_auth_decision: a request without a valid token still reaches
        # keystoneauth, which refuses it (401) rather than authtoken.
        return (
            "[filter:authtoken]\n"
            "paste.filter_factory = keystonemiddleware.auth_token:filter_factory\n"
            f"www_authenticate_uri = {ks.auth_url}\n"
            f"auth_url = {ks.auth_url}\n"
            "auth_type = password\n"
            f"username = {ks.username}\n"
            f"password = {ks.password}\n"
            "user_domain_id = default\n"
            f"project_name = {ks.project_name}\n"
            "project_domain_id = default\n"
            "memcached_servers = \n"
            "delay_auth_decision = True\n"
            "[filter:keystoneauth]\n"
            "use = egg:swift#keystoneauth\n"
            "operator_roles = admin, member\n"
        )

    def start(self, timeout: float = 30) -> None:
        self._write_config()
        for name in _SERVERS:
            log = (self.logs / f"{name}.log").open("ab")
            with log:
                self._procs[name] = subprocess.Popen(
                    [str(self.venv / "bin" / "python"), "-c", _SHIM, str(self.etc),
                     str(self.etc / f"{name}-server.conf"), f"{name}-server"],
                    env=_child_env(self.venv),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=self.state_dir,
                )
        deadline = time.monotonic() + timeout
        while True:
            try:
                token, storage = self.authenticate()
                status = self.request("PUT", f"{storage}/probe", token)[0]
                if status in (201, 202):
                    return
            except OSError:
                pass
            dead = [n for n, p in self._procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Swift did not come up (exited: {dead}):\n" + self.log_tail())
            time.sleep(0.1)

    def log_tail(self, lines: int = 20) -> str:
        out = []
        for name in _SERVERS:
            path = self.logs / f"{name}.log"
            if path.is_file():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {name}\n" + "\n".join(tail))
        return "\n".join(out)

    def stop(self) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        self._procs.clear()

    def __enter__(self) -> LocalSwift:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ client

    def request(
        self, method: str, url: str, token: str | None = None, body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
        try:
            sent = dict(headers or {})
            if token is not None:
                sent["X-Auth-Token"] = token
            conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""),
                         body=body, headers=sent)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def authenticate(self) -> tuple[str, str]:
        """(token, storage URL): the tempauth v1 handshake, or in keystone mode a
        project-scoped Keystone token of the configured user and its project's account."""
        if self.keystone is not None:
            return self._keystone_token(self.keystone)
        status, headers, _ = self.request(
            "GET", self.auth_url, headers={"X-Auth-User": USER, "X-Auth-Key": KEY}
        )
        if status // 100 != 2:
            raise OSError(f"tempauth answered {status}")
        return headers["X-Auth-Token"], headers["X-Storage-Url"]

    def _keystone_token(self, ks: KeystoneAuth) -> tuple[str, str]:
        domain = {"id": "default"}
        doc = {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": ks.username, "domain": domain, "password": ks.password}}},
            "scope": {"project": {"name": ks.project_name, "domain": domain}},
        }}
        status, headers, body = self.request(
            "POST", f"{ks.auth_url.rstrip('/')}/auth/tokens", body=json.dumps(doc).encode(),
            headers={"Content-Type": "application/json"},
        )
        if status != 201:
            raise OSError(f"Keystone answered {status}")
        project_id = str(json.loads(body)["token"]["project"]["id"])
        token = next(v for k, v in headers.items() if k.lower() == "x-subject-token")
        return token, self.storage_url_of(project_id)

    def location(self, container: str, name: str) -> str:
        """The single-tenant glance_store location of an object (tempauth credentials)."""
        user = urllib.parse.quote(USER, safe="")
        return f"swift+http://{user}:{KEY}@127.0.0.1:{self.ports['proxy']}/auth/v1.0/" \
            f"{container}/{name}"

    def put_object(self, container: str, name: str, data: bytes) -> str:
        """Store ``data``; the object's URL (under :attr:`storage_url`)."""
        token, storage = self.authenticate()
        for url in (f"{storage}/{container}", f"{storage}/{container}/{name}"):
            status = self.request("PUT", url, token, body=data if url.endswith(name) else b"")[0]
            if status not in (201, 202):
                raise OSError(f"PUT {url} answered {status}")
        return f"{storage}/{container}/{name}"
