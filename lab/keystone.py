"""Provision and run a real Keystone on 127.0.0.1, and a Glance that trusts it.

The keystone tests need the real thing: fernet tokens that expire, service
tokens, projects whose images Glance hides from each other. Keystone, like
Glance, pins too many packages to share edgecache's environment, so it gets a
virtualenv of its own (:func:`ensure_keystone_venv`). :class:`LocalKeystone`
writes a throw-away configuration (sqlite, fernet keys under its state
directory), bootstraps an ``admin`` user and runs ``keystone.wsgi.api`` under
uWSGI. :class:`KeystoneGlance` is a :class:`~lab.glance.LocalGlance`
with the ``keystone`` paste flavor: ``authtoken`` validates every token against
that Keystone and Glance's own default policies decide.

Its uWSGI runs like Glance's (:mod:`lab.uwsgi`).

Run ``python -m lab.keystone`` for a Keystone and a Glance to poke at by hand.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lab.glance import GlanceHTTPError, LocalGlance, ensure_glance_venv, oslo_value
from lab.httpclient import Response, request
from lab.logs import say, tails
from lab.ports import LOOPBACK
from lab.procs import child_env
from lab.uwsgi import UwsgiApp, UwsgiService, uwsgi_ini
from lab.venvs import VenvSpec, default_state_root, ensure_venv

__all__ = [
    "KEYSTONE_VENV",
    "KEYSTONE_VERSION",
    "KeystoneGlance",
    "KeystoneHTTPError",
    "LocalKeystone",
    "ensure_keystone_venv",
    "password_auth",
]

KEYSTONE_VERSION = "30.0.0"
PYUWSGI_REQUIREMENT = "pyuwsgi>=2.0.28,<2.1"
KEYSTONE_FLAVORS = ("keystone", "keystone+caching", "keystone+cachemanagement")
KEYSTONE_VENV = VenvSpec(
    name="venv-keystone",
    requirements=(f"keystone=={KEYSTONE_VERSION}", PYUWSGI_REQUIREMENT),
    scripts=("uwsgi", "keystone-manage"),
    only_binary=("pyuwsgi",),
    expect="takes ~10-30 s",
)

_SHORT_TOKEN_SCRIPT = Path(__file__).resolve().parent / "scripts" / "keystone_short_token.py"


class KeystoneHTTPError(RuntimeError):
    """Keystone answered with a status the helper did not expect."""

    def __init__(self, method: str, path: str, response: Response) -> None:
        text = response.body[:2000].decode("utf-8", "replace")
        super().__init__(f"{method} {path} -> {response.status}: {text}")
        self.status = response.status


def ensure_keystone_venv(root: Path) -> Path:
    """``root/venv-keystone`` with Keystone and pyuwsgi, built if needed."""
    return ensure_venv(root, KEYSTONE_VENV)


def password_auth(user: str, password: str, project: str | None) -> dict[str, Any]:
    """The ``POST /v3/auth/tokens`` body for a password login, project-scoped if named."""
    auth: dict[str, Any] = {
        "identity": {
            "methods": ["password"],
            "password": {
                "user": {"name": user, "domain": {"id": "default"}, "password": password}
            },
        }
    }
    if project is not None:
        auth["scope"] = {"project": {"name": project, "domain": {"id": "default"}}}
    return {"auth": auth}


@dataclass
class LocalKeystone(UwsgiService):
    """Keystone under uWSGI on 127.0.0.1 (sqlite, fernet), state below ``state_dir``.

    ``admin`` / :attr:`admin_password` in project ``admin`` holds the ``admin``
    role; the helpers create projects, users and role assignments with its token.
    """

    state_dir: Path
    venv: Path
    port: int = 0
    processes: int = 1
    threads: int = 4
    admin_password: str = "labpass"
    region: str = "RegionOne"
    _server: UwsgiApp | None = field(default=None, init=False, repr=False)
    _master: int | None = field(default=None, init=False, repr=False)
    _admin_token: tuple[str, float] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        self.venv = Path(self.venv).resolve()

    # -- paths and state ------------------------------------------------------------
    @property
    def auth_url(self) -> str:
        return f"{self.url}/v3"

    def log_tail(self, lines: int = 40) -> str:
        return tails([self.uwsgi_log, self.log_dir / "keystone.log"], lines)

    # -- configuration ----------------------------------------------------------------
    def _conf_text(self, token_expiration: int = 3600) -> str:
        s = self.state_dir
        return f"""\
[DEFAULT]
log_file = {oslo_value(self.log_dir / "keystone.log")}
debug = false
[database]
connection = sqlite:///{oslo_value(s / "keystone.sqlite")}
[identity]
# bcrypt's cheapest cost: every password login hashes, and these are test users.
password_hash_rounds = 4
[token]
provider = fernet
expiration = {token_expiration}
[fernet_tokens]
key_repository = {oslo_value(s / "fernet-keys")}
[fernet_receipts]
key_repository = {oslo_value(s / "fernet-keys")}
[credential]
key_repository = {oslo_value(s / "credential-keys")}
[oslo_concurrency]
lock_path = {oslo_value(self.run_dir)}
"""

    def _write_config(self) -> None:
        for sub in (self.etc_dir, self.log_dir, self.run_dir):
            sub.mkdir(parents=True, exist_ok=True)
        (self.etc_dir / "keystone.conf").write_text(self._conf_text())
        (self.etc_dir / "keystone-uwsgi.ini").write_text(uwsgi_ini(
            "keystone.wsgi.api:application", f"http11-socket = {LOOPBACK}:{self.port}\n",
            self.processes, self.threads,
            f"pidfile = {self.run_dir / 'uwsgi.pid'}\nlogto = {self.uwsgi_log}\n"
            "disable-logging = true\n",
        ))

    def _manage(self, *args: str) -> None:
        cmd = [
            str(self.venv / "bin" / "keystone-manage"),
            "--config-file", str(self.etc_dir / "keystone.conf"), *args,
        ]
        done = subprocess.run(
            cmd, env=child_env(self.venv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, timeout=300, check=False,
        )
        if done.returncode != 0:
            out = done.stdout.decode("utf-8", "replace").splitlines()[-40:]
            raise RuntimeError(
                f"keystone-manage {args[0]} failed ({done.returncode}):\n" + "\n".join(out)
                + "\n" + self.log_tail()
            )

    def _setup(self) -> None:
        """Schema, keys and the admin user; bootstrap again whenever the port changed."""
        synced = self.state_dir / ".db-synced"
        if not synced.is_file():
            self._manage("db_sync")
            for repository in ("fernet-keys", "credential-keys"):
                _write_key_repository(self.state_dir / repository)
            synced.write_text("ok\n")
        bootstrapped = self.state_dir / ".bootstrapped"
        if bootstrapped.is_file() and bootstrapped.read_text() == self.url:
            return
        # bootstrap is idempotent; it (re)points the identity endpoints at our port.
        self._manage(
            "bootstrap", "--bootstrap-password", self.admin_password,
            "--bootstrap-admin-url", self.auth_url, "--bootstrap-internal-url", self.auth_url,
            "--bootstrap-public-url", self.auth_url, "--bootstrap-region-id", self.region,
        )
        bootstrapped.write_text(self.url)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, timeout: float = 90) -> None:
        """Configure, bootstrap and run uWSGI until ``GET /v3`` answers on every worker."""
        def start_on(port: int, deadline: float) -> None:
            self.port = port
            self._write_config()
            self._setup()
            env = child_env(self.venv)
            env["OS_KEYSTONE_CONFIG_DIR"] = str(self.etc_dir)
            server = UwsgiApp(
                self.venv, self.etc_dir / "keystone-uwsgi.ini", port=port,
                processes=self.processes, probe_path="/v3", ready_status=200,
                log=self.uwsgi_log, name=f"Keystone at {self.url}", env=env,
                cwd=self.state_dir, extra_logs=(self.log_dir / "keystone.log",),
            )
            self._serve(server, deadline - time.monotonic())

        self._launch(timeout, "ensure_keystone_venv", start_on)

    # -- what clients configure ------------------------------------------------------
    def credentials(
        self, user: str = "admin", password: str | None = None, project: str = "admin"
    ) -> dict[str, str]:
        """keystoneauth password-plugin options for ``user`` in ``project`` (default domain).

        What an ``[upstream_auth]`` or ``[keystone_authtoken]`` section holds.
        """
        return {
            "auth_url": self.auth_url,
            "auth_type": "password",
            "username": user,
            "password": self.admin_password if password is None else password,
            "user_domain_id": "default",
            "project_name": project,
            "project_domain_id": "default",
        }

    def authtoken_options(self) -> dict[str, str]:
        """A ``[keystone_authtoken]`` section validating tokens as the admin, as Glance has it."""
        return {
            **self.credentials(),
            "www_authenticate_uri": self.auth_url,
            "region_name": self.region,
            "memcached_servers": "",
        }

    # -- API helpers ------------------------------------------------------------------
    def request(
        self, method: str, path: str, doc: object = None,
        headers: Mapping[str, str] | None = None, *, ok: tuple[int, ...] = (200, 201, 204),
    ) -> Response:
        """One JSON request; raises KeystoneHTTPError unless the status is in ``ok``."""
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        body = None if doc is None else json.dumps(doc).encode()
        resp = request(self.port, method, path, body, all_headers)
        if resp.status not in ok:
            raise KeystoneHTTPError(method, path, resp)
        return resp

    def issue_token(self, user: str, password: str, project: str | None) -> str:
        """A fresh project-scoped (or unscoped) token for ``user``."""
        resp = self.request("POST", "/v3/auth/tokens", password_auth(user, password, project))
        return resp.headers["x-subject-token"]

    def admin_token(self) -> str:
        """The admin's token, reissued well before it expires."""
        if self._admin_token is None or self._admin_token[1] < time.monotonic():
            token = self.issue_token("admin", self.admin_password, "admin")
            self._admin_token = (token, time.monotonic() + 600)
        return self._admin_token[0]

    def _admin(self, method: str, path: str, doc: object = None) -> dict[str, Any]:
        resp = self.request(method, path, doc, {"X-Auth-Token": self.admin_token()})
        return dict(json.loads(resp.body)) if resp.body else {}

    def find(self, collection: str, name: str) -> str | None:
        """The id of the ``collection`` entry (``users``, ``projects``, ...) named ``name``."""
        found = self._admin("GET", f"/v3/{collection}?name={name}")[collection]
        return str(found[0]["id"]) if found else None

    def role_id(self, name: str) -> str:
        role = self.find("roles", name)
        if role is None:
            raise KeyError(f"no role {name!r}")
        return role

    def create_project(self, name: str) -> str:
        """The id of project ``name`` in the default domain (created when missing)."""
        existing = self.find("projects", name)
        if existing is not None:
            return existing
        doc = {"project": {"name": name, "domain_id": "default"}}
        return str(self._admin("POST", "/v3/projects", doc)["project"]["id"])

    def create_user(self, name: str, password: str, project_id: str, *roles: str) -> str:
        """A user with ``roles`` on ``project_id`` (the user is created when missing)."""
        user_id = self.find("users", name)
        if user_id is None:
            doc = {"user": {"name": name, "password": password, "domain_id": "default",
                            "default_project_id": project_id}}
            user_id = str(self._admin("POST", "/v3/users", doc)["user"]["id"])
        for role in roles:
            self.grant(role, user_id, project_id)
        return user_id

    def grant(self, role: str, user_id: str, project_id: str) -> None:
        path = f"/v3/projects/{project_id}/users/{user_id}/roles/{self.role_id(role)}"
        self._admin("PUT", path)

    def register_service(self, service_type: str, name: str, url: str) -> None:
        """Catalog entry (public, internal, admin) so that clients can find ``url``."""
        service = self._admin(
            "POST", "/v3/services", {"service": {"type": service_type, "name": name}}
        )["service"]
        for interface in ("public", "internal", "admin"):
            self._admin("POST", "/v3/endpoints", {"endpoint": {
                "service_id": service["id"], "interface": interface, "url": url,
                "region_id": self.region,
            }})

    def short_lived_token(
        self, user: str, password: str, project: str | None, lifetime: int = 1
    ) -> str:
        """A token this Keystone accepts and that expires after ``lifetime`` seconds.

        Keystone sets one lifetime for every token it issues; this one comes from
        Keystone's own code loaded in a short process with ``[token] expiration``
        changed, sharing the database and fernet keys.
        """
        etc = self.state_dir / "etc-short-tokens"
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "keystone.conf").write_text(self._conf_text(token_expiration=lifetime))
        env = child_env(self.venv)
        env["OS_KEYSTONE_CONFIG_DIR"] = str(etc)
        done = subprocess.run(
            [str(self.venv / "bin" / "python"), str(_SHORT_TOKEN_SCRIPT)],
            input=json.dumps(password_auth(user, password, project)).encode(),
            env=env, capture_output=True, timeout=120, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                "short-lived token: " + done.stderr.decode("utf-8", "replace")[-3000:]
            )
        return done.stdout.decode().strip().splitlines()[-1]


def _write_key_repository(directory: Path) -> None:
    """What ``keystone-manage fernet_setup`` writes: a staged key 0 and a primary key 1.

    Written here because each keystone-manage run costs seconds of imports.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in ("0", "1"):
        path = directory / name
        if not path.exists():
            path.write_bytes(base64.urlsafe_b64encode(os.urandom(32)))
            path.chmod(0o600)


@dataclass
class KeystoneGlance(LocalGlance):
    """A :class:`LocalGlance` whose paste pipeline validates tokens with ``keystone``.

    Glance's default policies apply (a deactivated image is 403 to non-admins,
    a private image is 404 to other projects). The inherited helpers
    (``create_image``, ``deactivate_image``, ...) act as Keystone's admin unless
    the caller passes its own ``X-Auth-Token``.
    """

    keystone: LocalKeystone | None = None
    service_user: str = "admin"
    service_project: str = "admin"

    def __post_init__(self) -> None:
        if self.flavor not in KEYSTONE_FLAVORS:
            raise ValueError(f"flavor must be one of {KEYSTONE_FLAVORS!r}")
        if self.keystone is None:
            raise ValueError("KeystoneGlance needs the LocalKeystone it trusts")
        self.state_dir = Path(self.state_dir).resolve()
        self.venv = Path(self.venv).resolve()

    def _write_config(self) -> None:
        super()._write_config()
        ks = self.keystone
        assert ks is not None
        conf = self.etc_dir / "glance-api.conf"
        conf.write_text(
            conf.read_text()
            + f"""
[keystone_authtoken]
www_authenticate_uri = {ks.auth_url}
auth_url = {ks.auth_url}
auth_type = password
username = {self.service_user}
password = {ks.admin_password}
user_domain_id = default
project_name = {self.service_project}
project_domain_id = default
region_name = {ks.region}
memcached_servers =
service_token_roles_required = true
"""
        )
        # Glance's own defaults, except the rule the noauth flavors open: none (and
        # whatever policy_rules say).
        (self.etc_dir / "policy.yaml").write_text(self.policy_lines() or "{}\n")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | IO[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 120,
    ) -> Response:
        """As LocalGlance.request, with the admin's token unless the caller sent one."""
        merged = dict(headers or {})
        if self.keystone is not None and self.keystone.running and not any(
            name.lower() == "x-auth-token" for name in merged
        ):
            merged["X-Auth-Token"] = self.keystone.admin_token()
        return super().request(method, path, body, merged, timeout)

    def create_image_as(
        self, token: str, data: bytes, name: str = "test", **properties: str
    ) -> dict[str, Any]:
        """An active image owned by the token's project."""
        auth = {"X-Auth-Token": token}
        doc = {"name": name, "disk_format": "raw", "container_format": "bare", **properties}
        created = self.request(
            "POST", "/v2/images", json.dumps(doc).encode(),
            {**auth, "Content-Type": "application/json"},
        )
        if created.status != 201:
            raise GlanceHTTPError("POST", "/v2/images", created)
        image_id = created.json()["id"]
        put = self.request(
            "PUT", f"/v2/images/{image_id}/file", data,
            {**auth, "Content-Type": "application/octet-stream",
             "Content-Length": str(len(data))},
        )
        if put.status != 204:
            raise GlanceHTTPError("PUT", f"/v2/images/{image_id}/file", put)
        return self.get_image(image_id)

    def share_image(self, image_id: str, owner_token: str, member_project: str,
                    member_token: str) -> None:
        """Add ``member_project`` as a member of the image and accept on its behalf."""
        added = self.request(
            "POST", f"/v2/images/{image_id}/members",
            json.dumps({"member": member_project}).encode(),
            {"X-Auth-Token": owner_token, "Content-Type": "application/json"},
        )
        if added.status != 200:
            raise GlanceHTTPError("POST", f"/v2/images/{image_id}/members", added)
        path = f"/v2/images/{image_id}/members/{member_project}"
        accepted = self.request(
            "PUT", path, json.dumps({"status": "accepted"}).encode(),
            {"X-Auth-Token": member_token, "Content-Type": "application/json"},
        )
        if accepted.status != 200:
            raise GlanceHTTPError("PUT", path, accepted)


def _main() -> int:
    root = default_state_root()
    ks_venv = ensure_keystone_venv(root)
    glance_venv = ensure_glance_venv(root)
    with LocalKeystone(root / "keystone-manual", ks_venv) as keystone:
        glance = KeystoneGlance(root / "glance-keystone-manual", glance_venv, flavor="keystone",
                                keystone=keystone)
        with glance:
            keystone.register_service("image", "glance", glance.url)
            say("lab.keystone", f"Keystone {KEYSTONE_VERSION} at {keystone.auth_url} (admin/"
                 f"{keystone.admin_password}); Glance at {glance.url}; Ctrl-C stops both")
            with contextlib.suppress(KeyboardInterrupt):
                while keystone.running and glance.running:
                    time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
