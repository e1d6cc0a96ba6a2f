"""Provision and run a real single-node Swift on 127.0.0.1 (the published ``swift`` package).

Swift gets a virtualenv of its own under :func:`~lab.venvs.default_state_root`
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
started through ``lab/scripts/swift_server.py``, which points ``swift_dir`` at
the state directory before running the server's WSGI app.
"""

from __future__ import annotations

import json
import signal
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from lab.httpclient import request
from lab.polling import WaitTimeout, wait_until
from lab.ports import LOOPBACK, free_port
from lab.procs import Process, StartError, alive, child_env
from lab.venvs import VenvSpec, ensure_venv, run_logged

__all__ = [
    "KEY",
    "SWIFT_VENV",
    "SWIFT_VERSION",
    "USER",
    "KeystoneAuth",
    "LocalSwift",
    "ensure_swift_venv",
]

SWIFT_VERSION = "2.38.3"
#: for the keystone mode's ``authtoken`` filter (Swift does not depend on it)
KEYSTONEMIDDLEWARE_VERSION = "13.0.1"
USER = "test:tester"
KEY = "testing"
SWIFT_VENV = VenvSpec(
    name="venv-swift",
    requirements=(f"swift=={SWIFT_VERSION}", f"keystonemiddleware=={KEYSTONEMIDDLEWARE_VERSION}"),
    expect="takes ~15-40 s",
)

_SERVERS = ("account", "container", "object", "proxy")
_SCRIPTS = Path(__file__).resolve().parent / "scripts"


def ensure_swift_venv(root: Path) -> Path:
    """``root/venv-swift`` with Swift and keystonemiddleware, built if needed."""
    return ensure_venv(root, SWIFT_VENV)


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
        self._procs: dict[str, Process] = {}

    @property
    def url(self) -> str:
        """The proxy's base URL."""
        return f"http://{LOOPBACK}:{self.ports['proxy']}"

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
        """The four servers' pids while they run."""
        return [pid for p in self._procs.values() if (pid := p.pid) is not None and alive(pid)]

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
            + "[filter:cache]\nuse = call:swift_dict_cache:filter_factory\n"
            + self._auth_filters()
        )
        run_logged(
            [str(self.venv / "bin" / "python"), str(_SCRIPTS / "swift_rings.py"), str(self.etc),
             *(str(self.ports[n]) for n in ("account", "container", "object"))],
            child_env(self.venv),
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
        """Configure and run the four servers until the proxy stores an object."""
        self._write_config()
        for name in _SERVERS:
            self._procs[name] = Process(
                [str(self.venv / "bin" / "python"), str(_SCRIPTS / "swift_server.py"),
                 str(self.etc), str(self.etc / f"{name}-server.conf"), f"{name}-server"],
                log=self.logs / f"{name}.log", name=f"swift {name}-server",
                env=child_env(self.venv), cwd=self.state_dir, stop_timeout=5,
            )
            self._procs[name].spawn()
        try:
            wait_until(self._serving, "Swift to store an object", timeout, interval=0.1)
        except (WaitTimeout, StartError) as exc:
            self.stop()
            raise StartError(f"Swift did not come up: {exc}\n{self.log_tail()}") from None
        except BaseException:
            self.stop()
            raise

    def _serving(self) -> bool:
        dead = [name for name, proc in self._procs.items() if not proc.running]
        if dead:
            raise StartError(f"exited: {dead}")
        try:
            token, storage = self.authenticate()
            return self.request("PUT", f"{storage}/probe", token)[0] in (201, 202)
        except OSError:
            return False

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(proc.log_tail(lines) for proc in self._procs.values())

    def stop(self) -> None:
        """Stop every server by its pid (SIGTERM, then SIGKILL) and reap it."""
        for proc in self._procs.values():
            if proc.running:
                proc.signal(signal.SIGTERM)
        for proc in self._procs.values():
            proc.stop()
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
        """One request to ``url``: (status, headers with lower-cased names, body)."""
        parts = urllib.parse.urlsplit(url)
        sent = dict(headers or {})
        if token is not None:
            sent["X-Auth-Token"] = token
        answer = request(parts.port or 80, method,
                         parts.path + (f"?{parts.query}" if parts.query else ""),
                         body, sent, timeout=10, host=parts.hostname or LOOPBACK)
        return answer.status, answer.headers, answer.body

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
        return headers["x-auth-token"], headers["x-storage-url"]

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
