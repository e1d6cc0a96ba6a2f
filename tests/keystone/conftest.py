"""A real Keystone, a real Glance that trusts it, and edgecache in keystone mode.

Provisioned by the fixtures themselves (in CI too): Keystone 30 and Glance 33
each in their own virtualenv under ``default_state_root()``, sqlite, fernet
tokens, uWSGI on loopback. Keystone holds:

=========  ===========  =====================================================
project    user         roles
=========  ===========  =====================================================
admin      admin        admin, service (Glance's and edgecache's service user)
proj-a     alice        member
proj-b     bob          member
proj-c     carol        member
=========  ===========  =====================================================

Every server is stopped by its pid at the end of the session, and its state
removed. Tokens are issued fresh per use: a test never depends on how long an
earlier one has lived.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab.edgecache import EdgecacheProcess
from lab.glance import ensure_glance_venv
from lab.keystone import KeystoneGlance, LocalKeystone, ensure_keystone_venv
from lab.polling import WaitTimeout, wait_until
from lab.procs import alive, group_pids
from lab.venvs import default_state_root

PASSWORD = "secret-pw"
USERS = {"alice": "proj-a", "bob": "proj-b", "carol": "proj-c"}
#: edgecache's auth_cache_ttl in these tests: short, so that a change upstream shows soon.
AUTH_CACHE_TTL = 2


@dataclass
class World:
    """Keystone, Glance and who is who."""

    keystone: LocalKeystone
    glance: KeystoneGlance
    projects: dict[str, str]  # name -> id
    state: Path

    def token(self, user: str) -> str:
        """A fresh token of ``user`` scoped to its project."""
        if user == "admin":
            return self.keystone.issue_token("admin", self.keystone.admin_password, "admin")
        return self.keystone.issue_token(user, PASSWORD, USERS[user])

    def expired_token(self, user: str) -> str:
        """A token of ``user`` that Keystone issued and that has expired by now."""
        token = self.keystone.short_lived_token(user, PASSWORD, USERS[user], lifetime=1)
        wait_until(lambda: not self.keystone_accepts(token), "a 1 s token to expire", 10)
        return token

    def keystone_accepts(self, token: str) -> bool:
        """Keystone's own verdict on ``token``: what Glance and edgecache ask it."""
        answer = self.keystone.request(
            "GET", "/v3/auth/tokens",
            headers={"X-Auth-Token": self.keystone.admin_token(), "X-Subject-Token": token},
            ok=(200, 404),
        )
        return answer.status == 200

    def project_of(self, user: str) -> str:
        return self.projects[USERS[user]]

    def new_image(self, owner: str, size: int = 256 * 1024, **properties: str) -> Image:
        data = os.urandom(size)
        meta = self.glance.create_image_as(self.token(owner), data, name=f"{owner}-img",
                                           **properties)
        assert meta["os_hash_value"] == hashlib.sha512(data).hexdigest()
        return Image(str(meta["id"]), data, meta)

    def daemon_options(self, **upstream: str) -> dict[str, dict[str, str]]:
        """edgecache's config in keystone mode, [keystone_authtoken] as Glance has it."""
        return {
            "DEFAULT": {"auth_strategy": "keystone"},
            "keystone_authtoken": self.keystone.authtoken_options(),
            "upstream_auth": self.keystone.credentials(),
            "upstream": dict(upstream),
        }


@dataclass(frozen=True)
class Image:
    id: str
    data: bytes
    meta: Mapping[str, Any]

    @property
    def path(self) -> str:
        return f"/v2/images/{self.id}/file"

    @property
    def sha512(self) -> str:
        return hashlib.sha512(self.data).hexdigest()


@pytest.fixture(scope="session")
def world() -> Iterator[World]:
    root = default_state_root()
    ks_venv = ensure_keystone_venv(root)
    glance_venv = ensure_glance_venv(root)
    unique = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    state = root / "tests-keystone" / unique
    keystone = LocalKeystone(state / "keystone", ks_venv)
    glance = KeystoneGlance(state / "glance", glance_venv, flavor="keystone", keystone=keystone)
    masters: list[int] = []
    try:
        keystone.start()
        assert keystone.pid is not None
        masters.append(keystone.pid)
        admin_project = keystone.create_project("admin")
        admin_user = keystone.find("users", "admin")
        assert admin_user is not None
        # Nova's case: the service user's token as X-Service-Token lets an expired
        # user token through (keystonemiddleware's service_token_roles).
        keystone.grant("service", admin_user, admin_project)
        projects = {"admin": admin_project}
        for user, project in USERS.items():
            projects[project] = keystone.create_project(project)
            keystone.create_user(user, PASSWORD, projects[project], "member")
        glance.start()
        assert glance.pid is not None
        masters.append(glance.pid)
        keystone.register_service("image", "glance", glance.url)
        yield World(keystone, glance, projects, state)
    finally:
        glance.stop()
        keystone.stop()
        for master in masters:
            for pid in group_pids(master):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(state, ignore_errors=True)
    left = [pid for master in masters for pid in group_pids(master)]
    assert not left, f"processes left behind: {left}"


DaemonFactory = Callable[..., EdgecacheProcess]


@pytest.fixture(scope="module")
def start_daemon(
    world: World, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonFactory]:
    """Start edgecache daemons in keystone mode in front of the session's Glance."""
    started: list[EdgecacheProcess] = []

    def start(*, auth_cache_ttl: int = AUTH_CACHE_TTL, default: Mapping[str, str] | None = None,
              **upstream: str) -> EdgecacheProcess:
        options = world.daemon_options(**upstream)
        options["DEFAULT"].update(default or {})
        daemon = EdgecacheProcess(
            tmp_path_factory.mktemp("edgecache"),
            glance_endpoints=[world.glance.url],
            max_size="2G",
            auth_cache_ttl=auth_cache_ttl,
            options=options,
            start_timeout=60,
        )
        started.append(daemon)
        return daemon.start()

    yield start
    for daemon in started:
        pid = daemon.pid if daemon.running else None
        daemon.stop()
        assert pid is None or not alive(pid), f"edgecache {pid} left behind"


@contextlib.contextmanager
def glance_stopped(world: World) -> Iterator[None]:
    """Glance killed by its pid for the block (as in a crash: a graceful stop waits
    for idle keep-alive connections), then started again on the same port."""
    master = world.glance.pid
    assert master is not None
    os.killpg(master, signal.SIGKILL)
    world.glance.stop()  # reaps it
    # SIGKILL is delivered at once, but workers can take a moment to finish dying.
    with contextlib.suppress(WaitTimeout):
        wait_until(lambda: not group_pids(master), "Glance's workers to die", 10)
    assert world.glance.pid is None and not group_pids(master)
    try:
        yield
    finally:
        world.glance.start()
