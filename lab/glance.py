"""Provision and run a real Glance API on 127.0.0.1.

The demo command, the integration tests and the benchmarks need an actual Glance
upstream rather than a fake, so that edgecache is exercised against the real
protocol quirks (close-delimited cache-miss bodies, 204 for queued images, ...).

Glance pins far too many packages to share edgecache's environment, so it gets a
virtualenv of its own (:func:`ensure_venv`).  :class:`LocalGlance` then writes a
throw-away configuration (sqlite database, file store, no authentication) and runs
``glance.wsgi.api:application`` under uWSGI, because Glance 33 no longer ships a
standalone server.

Only the standard library is used here: this module must work before (and
independently of) anything else being installed.

Run ``python -m lab.glance [flavor [port]]`` for a Glance to poke at by hand.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

__all__ = [
    "FLAVORS",
    "GLANCE_VERSION",
    "GlanceHTTPError",
    "LocalGlance",
    "RequestRecord",
    "Response",
    "default_state_root",
    "ensure_venv",
    "free_port",
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

_VENV_NAME = "venv-glance"
_READY_MARKER = ".edgecache-ready"
_LOG_TAIL_LINES = 40
_STOP_GRACE_SECONDS = 20.0
_CHUNK = 1 << 20
# Prefix of our request-log lines, so that stray output in the file is never counted.
_REQ_TAG = "EDGECACHE-REQ"
_APP_READY = re.compile(r"WSGI app \d+ \(mountpoint='[^']*'\) ready in .* pid: (\d+)")
_REQ_LINE = re.compile(
    rf"^{_REQ_TAG} (?P<method>\S+) (?P<uri>\S+) (?P<status>\d+) (?P<size>\d+) (?P<msecs>\d+)$"
)
# Interpreter variables that would make the Glance venv's Python import the wrong code.
_FOREIGN_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PIP_USER", "__PYVENV_LAUNCHER__")


def _say(message: str) -> None:
    print(f"[localglance] {message}", file=sys.stderr, flush=True)


def default_state_root() -> Path:
    """Where venvs and scratch state live when the caller does not say.

    A checkout keeps everything in its git-ignored ``.state`` so that a developer
    can inspect or delete it; an installed package falls back to the user cache.
    """
    env = os.environ.get("EDGECACHE_STATE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    repo = Path(__file__).resolve().parents[1]
    if (repo / "pyproject.toml").is_file():
        return repo / ".state"
    return Path.home() / ".cache" / "edgecache"


# --------------------------------------------------------------------------- venv


def _child_env(venv: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env.pop("VIRTUAL_ENV", None)
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}"
    return env


def _run_logged(cmd: list[str], env: Mapping[str, str], what: str) -> None:
    """Run ``cmd``, echoing its output to stderr; raise with the tail on failure.

    Output goes through Python rather than straight to fd 2 so that it also works
    when ``sys.stderr`` is replaced (pytest's capsys has no file descriptor).
    """
    tail: deque[str] = deque(maxlen=_LOG_TAIL_LINES)
    with subprocess.Popen(
        cmd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            sys.stderr.write(line)
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"{what} failed (exit {rc}):\n" + "\n".join(tail))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise provisioning between processes (e.g. parallel test workers)."""
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _venv_stamp() -> str:
    major, minor = sys.version_info[:2]
    return (
        f"glance=={GLANCE_VERSION} {PYUWSGI_REQUIREMENT} {SWIFTCLIENT_REQUIREMENT}"
        f" python{major}.{minor}\n"
    )


def _venv_ready(venv: Path) -> bool:
    marker = venv / _READY_MARKER
    return (
        marker.is_file()
        and marker.read_text() == _venv_stamp()
        # exists() follows the symlink: a removed base interpreter means rebuild.
        and (venv / "bin" / "python").exists()
        and (venv / "bin" / "uwsgi").is_file()
        and (venv / "bin" / "glance-manage").is_file()
    )


def ensure_venv(root: Path) -> Path:
    """Return ``root/venv-glance`` with Glance and pyuwsgi installed, creating it if needed.

    The marker file is written only after pip succeeded, so an interrupted or failed
    install is thrown away and redone on the next call instead of being trusted.
    Only PyPI (or whatever pip is configured with) is needed.
    """
    root = Path(root).resolve()
    venv = root / _VENV_NAME
    if _venv_ready(venv):
        return venv
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{_VENV_NAME}.lock"):
        if _venv_ready(venv):  # another process finished it while we waited
            return venv
        if not sys.executable:
            raise RuntimeError("cannot create a venv: sys.executable is unknown")
        started = time.monotonic()
        if venv.exists():
            _say(f"removing incomplete or outdated {venv}")
            shutil.rmtree(venv)
        _say(f"creating {venv} with {sys.executable}")
        _run_logged([sys.executable, "-m", "venv", str(venv)], _child_env(), "venv creation")
        _say(f"installing glance=={GLANCE_VERSION}, pyuwsgi and swiftclient (takes ~20-40 s)")
        _run_logged(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--progress-bar",
                "off",
                "--only-binary",
                "pyuwsgi",
                f"glance=={GLANCE_VERSION}",
                PYUWSGI_REQUIREMENT,
                SWIFTCLIENT_REQUIREMENT,
            ],
            _child_env(venv),
            "pip install of glance",
        )
        (venv / _READY_MARKER).write_text(_venv_stamp())
        _say(f"{venv} ready in {time.monotonic() - started:.1f} s")
    return venv


# ------------------------------------------------------------------ processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it).

    There is an unavoidable race until the server binds it; :meth:`LocalGlance.start`
    retries with a new port when it loses that race.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) of ``pid`` from /proc, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may itself contain spaces or ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[2])


def _alive(pid: int) -> bool:
    """True if ``pid`` runs; a zombie does not count (``kill -0`` would say it does)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is not None and stat[1] == pgid and stat[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return sorted(found)


def _tail(path: Path, lines: int, start: int = 0) -> list[str]:
    try:
        with path.open("rb") as fh:
            fh.seek(start)
            data = fh.read()
    except FileNotFoundError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-lines:]


# ----------------------------------------------------------------------- HTTP


class Response(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class RequestRecord(NamedTuple):
    """One line of uWSGI's request log."""

    method: str
    path: str  # without the query string
    query: str
    status: int
    size: int  # response body bytes actually sent
    msecs: int


class GlanceHTTPError(RuntimeError):
    """Glance answered with a status the helper did not expect."""

    def __init__(self, method: str, path: str, response: Response) -> None:
        text = response.body[:2000].decode("utf-8", "replace")
        super().__init__(f"{method} {path} -> {response.status}: {text}")
        self.status = response.status
        self.response = response


# ------------------------------------------------------------------ LocalGlance


def _oslo(value: object) -> str:
    # oslo.config expands "$name"; a literal dollar in a path has to be doubled.
    return str(value).replace("$", "$$")


@dataclass
class LocalGlance:
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
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log_offset: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {FLAVORS!r}, not {self.flavor!r}")
        self.state_dir = Path(self.state_dir).resolve()
        self.venv = Path(self.venv).resolve()

    # -- paths ----------------------------------------------------------------
    @property
    def etc_dir(self) -> Path:
        return self.state_dir / "etc"

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def uwsgi_log(self) -> Path:
        return self.log_dir / "uwsgi.log"

    @property
    def api_log(self) -> Path:
        return self.log_dir / "glance-api.log"

    @property
    def request_log_path(self) -> Path:
        return self.log_dir / "requests.log"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "uwsgi.pid"

    @property
    def _ini(self) -> Path:
        return self.etc_dir / "glance-uwsgi.ini"

    # -- state ----------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The uWSGI master's pid while it runs, else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    def process_group(self) -> list[int]:
        """Live pids of this instance (master and workers); empty once stopped."""
        if self._proc is None:
            return []
        return _group_pids(self._proc.pid)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the uWSGI log and of Glance's own log, for error messages."""
        parts = []
        for path in (self.uwsgi_log, self.api_log):
            tail = _tail(path, lines)
            if tail:
                parts.append(f"--- {path} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(parts) or "(no log output)"

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
                f"swift_store_auth_address = {_oslo(self.swift_auth_address)}",
                f"swift_store_user = {_oslo(self.swift_user)}",
                f"swift_store_key = {_oslo(self.swift_key)}",
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
image_cache_dir = {_oslo(data / "cache")}
image_cache_driver = centralized_db
image_cache_max_size = 10737418240
worker_self_reference_url = {self.url}
enabled_import_methods = []
node_staging_uri = file://{_oslo(data / "staging")}
show_multiple_locations = {self.show_multiple_locations}
log_file = {_oslo(self.api_log)}
debug = false

[database]
connection = sqlite:///{_oslo(data / "glance.sqlite")}

[glance_store]
{self._store_options()}
filesystem_store_datadir = {_oslo(data / "images")}

[paste_deploy]
flavor = {self.flavor}
config_file = {_oslo(etc / "glance-api-paste.ini")}

[oslo_policy]
policy_file = {_oslo(etc / "policy.yaml")}
enforce_new_defaults = false
enforce_scope = false

[oslo_concurrency]
lock_path = {_oslo(self.run_dir)}
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
        policy = "".join(f'"{rule}": ""\n' for rule in opened)
        policy += '"download_image": "not \'deactivated\':%(status)s"\n'
        (etc / "policy.yaml").write_text(policy)

        if self.close_connections:
            # devstack's setup: faster cache misses, no keep-alive.
            socket_lines = f"http-socket = 127.0.0.1:{self.port}\nadd-header = Connection: close\n"
        else:
            socket_lines = f"http11-socket = 127.0.0.1:{self.port}\n"
        # die-on-term + the master-start hook turn SIGTERM into a graceful shutdown.
        # need-app makes a broken configuration exit instead of answering 500 forever.
        # Request lines go to their own file in a fixed format for count_requests().
        self._ini.write_text(
            f"""\
[uwsgi]
module = glance.wsgi.api:application
{socket_lines}master = true
processes = {self.processes}
threads = {self.threads}
enable-threads = true
lazy-apps = true
need-app = true
die-on-term = true
hook-master-start = unix_signal:15 gracefully_kill_them_all
thunder-lock = true
buffer-size = 65535
http-auto-chunked = true
http-chunked-input = true
http-raw-body = true
worker-reload-mercy = 15
env = OS_GLANCE_CONFIG_DIR={etc}
pidfile = {self.pidfile}
logto = {self.uwsgi_log}
req-logger = file:{self.request_log_path}
log-format = {_REQ_TAG} %(method) %(uri) %(status) %(size) %(msecs)
"""
        )

    def _db_sync(self) -> None:
        """Create the schema once per state_dir (marker written after success)."""
        marker = self.data_dir / ".db-synced"
        if marker.is_file():
            return
        env = _child_env(self.venv)
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
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            out = done.stdout.decode("utf-8", "replace").splitlines()[-_LOG_TAIL_LINES:]
            log = _tail(self.log_dir / "glance-manage.log", _LOG_TAIL_LINES)
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
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            cmdline = b""
        # Only ours if its command line names our ini file (pids get reused).
        if _alive(pid) and str(self._ini).encode() in cmdline:
            _say(f"stopping stale uWSGI {pid} from {self.state_dir}")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        self.pidfile.unlink(missing_ok=True)

    def start(self, timeout: float = 60) -> None:
        """Write the configuration, create the database and run uWSGI until it serves.

        Raises RuntimeError with the log tail when uWSGI exits, answers 500 (the
        app failed to load) or is not ready within ``timeout`` seconds.
        """
        if self.running:
            return
        if not (self.venv / "bin" / "uwsgi").is_file():
            raise RuntimeError(f"no uwsgi in {self.venv}: call ensure_venv() first")
        deadline = time.monotonic() + timeout
        pick_port = self.port == 0
        for attempt in range(3 if pick_port else 1):
            if pick_port:
                self.port = free_port()
            self._write_config()
            self._db_sync()
            self._kill_stale()
            self._spawn()
            try:
                self._wait_ready(deadline)
                atexit.register(self.stop)
                return
            except _PortTaken:
                self.stop()
                if attempt == 2 or not pick_port:
                    raise RuntimeError(f"port {self.port} is in use\n{self.log_tail()}") from None
                _say(f"port {self.port} was taken meanwhile, retrying")
            except BaseException:
                self.stop()
                raise

    def _spawn(self) -> None:
        self.uwsgi_log.touch()
        self._log_offset = self.uwsgi_log.stat().st_size
        env = _child_env(self.venv)
        # pyuwsgi runs inside an already started Python, so the ini's env= comes too
        # late for Glance's config loader: export it here.
        env["OS_GLANCE_CONFIG_DIR"] = str(self.etc_dir)
        with self.uwsgi_log.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(self.venv / "bin" / "uwsgi"), "--ini", str(self._ini)],
                env=env,
                cwd=self.state_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() can kill it whole
            )

    def _run_log(self) -> str:
        return "\n".join(_tail(self.uwsgi_log, 10_000, self._log_offset))

    def _wait_ready(self, deadline: float) -> None:
        """Wait for GET / to answer 300 *and* every worker to have loaded Glance.

        With lazy-apps each worker imports Glance itself, a few seconds after the
        first one already answers.  Waiting for all of them makes timings repeatable
        and avoids stopping a worker mid-load (see stop()).
        """
        assert self._proc is not None
        bound = f"bound to TCP address 127.0.0.1:{self.port} "
        answered = False
        while True:
            if self._proc.poll() is not None:
                if "Address already in use" in self._run_log():
                    raise _PortTaken
                raise RuntimeError(
                    f"uWSGI exited with {self._proc.returncode} during start\n{self.log_tail()}"
                )
            run_log = self._run_log()
            # Only trust an answer once our own uWSGI has the port: something else
            # could be listening there.
            if not answered and bound in run_log:
                try:
                    status = self.request("GET", "/", timeout=2).status
                except OSError:
                    status = 0
                if status == 500:
                    raise RuntimeError(f"Glance failed to load (GET / -> 500)\n{self.log_tail()}")
                answered = status == 300
            if answered and len(set(_APP_READY.findall(run_log))) >= self.processes:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Glance not ready at {self.url} in time\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop uWSGI gracefully, forcefully after 20 s, and reap it. Idempotent."""
        atexit.unregister(self.stop)
        proc = self._proc
        if proc is None:
            return
        master = proc.pid  # with pyuwsgi the master is our child itself (= pidfile)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(master, signal.SIGTERM)
            deadline = time.monotonic() + _STOP_GRACE_SECONDS
            while True:
                try:
                    proc.wait(1.0)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if time.monotonic() >= deadline:
                    _say(f"uWSGI {master} still running {_STOP_GRACE_SECONDS:.0f} s after SIGTERM")
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(master, signal.SIGKILL)
                    proc.wait()  # reap, or it stays a zombie
                    break
                # A worker that was still importing Glance when the master broadcast
                # the graceful SIGHUP ignored it, and the master would wait for it
                # forever: repeat the signal to the workers that are left.
                for pid in _group_pids(master):
                    if pid != master:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGHUP)
        # Workers orphaned by a crashed master would live on; the group id stays
        # reserved while any member exists, so this cannot hit a stranger.
        if _group_pids(master):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(master, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)

    def __enter__(self) -> LocalGlance:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- HTTP helpers -----------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: bytes | IO[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 120,
    ) -> Response:
        """One request on a fresh connection; the whole body is read into memory.

        http.client rather than urllib: no proxy variables from the environment,
        no exceptions for 3xx/4xx, and a large block size for streamed uploads.
        """
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout, blocksize=_CHUNK)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            data = resp.read()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()

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
            records.append(
                RequestRecord(
                    m["method"], uri_path, query, int(m["status"]), int(m["size"]), int(m["msecs"])
                )
            )
        return records

    def count_requests(
        self, method: str, path: str, *, at_least: int | None = None, timeout: float = 5.0
    ) -> int:
        """How many ``method path`` requests (query string ignored) Glance has finished.

        Because log lines appear only when a request is complete, pass ``at_least``
        to poll up to ``timeout`` seconds for that many; the count is returned
        either way (it may be higher, never waits for a lower one).
        """
        method = method.upper()
        deadline = time.monotonic() + timeout
        while True:
            count = sum(1 for r in self.request_log() if r.method == method and r.path == path)
            if at_least is None or count >= at_least or time.monotonic() >= deadline:
                return count
            time.sleep(0.05)


class _PortTaken(Exception):
    """uWSGI could not bind the chosen port."""


def sha512_file(path: Path) -> str:
    """Hex sha512 of a file, as Glance reports it in ``os_hash_value``."""
    digest = hashlib.sha512()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _main(argv: list[str]) -> int:
    flavor = argv[0] if argv else ""
    port = int(argv[1]) if len(argv) > 1 else 9292
    root = default_state_root()
    venv = ensure_venv(root)
    with LocalGlance(root / "glance-manual", venv, port=port, flavor=flavor) as glance:
        _say(f"Glance {GLANCE_VERSION} (flavor {flavor!r}) at {glance.url}; Ctrl-C stops it")
        with contextlib.suppress(KeyboardInterrupt):
            while glance.running:
                time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
