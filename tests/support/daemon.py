"""The real edgecache daemon in a separate process, started the way operators start it.

:class:`Daemon` writes an INI file (``[DEFAULT]``, ``[cache]``, ``[upstream]``), runs
``sys.executable -m edgecache serve --config-file FILE`` in a new session with its
output in a log file, and waits until ``GET /versions`` answers 200::

    with Daemon(tmp_path, glance_endpoints=[fg.url]) as daemon:
        requests.get(f"{daemon.url}/v2/images/{image_id}/file")
        daemon.kill9()
        daemon.restart()          # same config file, same port

Every daemon is stopped by its pid: :meth:`Daemon.stop` (SIGTERM, then SIGKILL) on
``__exit__``, and, as a last resort, at interpreter exit for any still running, so
no process outlives the test session.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

__all__ = [
    "Daemon",
    "DaemonError",
    "RawResponse",
    "free_port",
    "metric_value",
    "raw_request",
    "run_cli",
    "wait_for",
]

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
START_TIMEOUT: Final = 20.0
STOP_TIMEOUT: Final = 10.0

_RUNNING: weakref.WeakSet[Daemon] = weakref.WeakSet()


class DaemonError(RuntimeError):
    """The daemon did not come up (its log is in the message)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment, with the checkout importable and no systemd socket.

    ``extra`` (e.g. a test's own ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC``) goes on top.
    """
    env = dict(os.environ)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CACHE_DIRECTORY"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_cli(args: Sequence[str], *, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``python -m edgecache ARGS`` to completion (stdout and stderr captured)."""
    return subprocess.run(
        [sys.executable, "-m", "edgecache", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        cwd=REPO_ROOT,
        check=False,
        stdin=subprocess.DEVNULL,
    )


class Daemon:
    """``edgecache serve`` as a child process, with its own config file and cache directory."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        glance_endpoints: Iterable[str],
        max_size: str = "1G",
        stall_time: int = 60,
        auth_cache_ttl: int = 60,
        bind_port: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = START_TIMEOUT,
        options: Mapping[str, Mapping[str, str]] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``options`` adds or overrides config values by section (``{"DEFAULT": {...}}``);
        ``env`` adds environment variables for the daemon."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.workdir / "cache"
        self.host = "127.0.0.1"
        self.port = bind_port if bind_port is not None else free_port(self.host)
        self.config_file = self.workdir / "edgecache.conf"
        self.log_file = self.workdir / "edgecache.log"
        self.start_timeout = start_timeout
        self.env = dict(env or {})
        self.options: dict[str, dict[str, str]] = {
            "DEFAULT": {
                "bind_host": self.host,
                "bind_port": str(self.port),
                "auth_strategy": "noauth",
            },
            "cache": {
                "directory": str(self.cache_dir),
                "max_size": max_size,
                "stall_time": str(stall_time),
            },
            "upstream": {
                "glance_endpoints": ",".join(glance_endpoints),
                "auth_cache_ttl": str(auth_cache_ttl),
            },
        }
        self.reconfigure(options or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.starts = 0

    def reconfigure(self, options: Mapping[str, Mapping[str, str]]) -> None:
        """Merge ``options`` into the config file (a running daemon sees them on SIGHUP)."""
        for section, values in options.items():
            self.options.setdefault(section, {}).update(values)
        self.config_file.write_text(
            "\n".join(
                f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())
                for section, values in self.options.items()
            )
        )

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the running daemon (no waiting)."""
        os.kill(self.pid, signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the daemon to exit by itself; its exit status (the process is reaped)."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("the daemon is not running")
        try:
            return proc.wait(timeout)
        finally:
            if proc.returncode is not None:
                self._release()

    # -- paths ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.cache_dir / "data"

    @property
    def incomplete_dir(self) -> Path:
        return self.cache_dir / "incomplete"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("the daemon is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    def log_text(self) -> str:
        """Everything the daemon(s) wrote so far (all runs, appended)."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> Self:
        """Spawn the daemon and wait until ``GET /versions`` answers 200."""
        if self._proc is not None:
            raise RuntimeError("the daemon is already started")
        self.starts += 1
        log = self.log_file.open("ab")
        log.write(f"----- start #{self.starts} -----\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "edgecache", "serve", "--config-file",
                 str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=_env(self.env),
                cwd=self.workdir,
            )
        except BaseException:
            log.close()
            raise
        self._proc, self._log = proc, log
        _RUNNING.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            proc = self._proc
            assert proc is not None
            if proc.poll() is not None:
                raise DaemonError(
                    f"edgecache exited with {proc.returncode} while starting:\n{self.log_text()}"
                )
            try:
                status = _get_status(self.host, self.port, "/versions")
            except OSError as exc:
                last_error = repr(exc)
            else:
                if status == 200:
                    return
                last_error = f"GET /versions answered {status}"
            time.sleep(0.05)
        raise DaemonError(
            f"edgecache not ready after {self.start_timeout} s ({last_error}):\n"
            f"{self.log_text()}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait, then SIGKILL; reaps. Idempotent. Returns the exit status."""
        proc = self._proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout)
            return proc.returncode
        finally:
            self._release()

    def kill9(self) -> None:
        """SIGKILL, no grace (a crash or an OOM kill), and reap."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("the daemon is not running")
        try:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT)
        finally:
            self._release()

    def restart(self) -> Self:
        """Stop (if running) and start again: same config file, same port, same cache."""
        self.stop()
        return self.start()

    def _release(self) -> None:
        proc, self._proc = self._proc, None
        log, self._log = self._log, None
        if log is not None:
            log.close()
        if proc is not None and proc.returncode is None:
            # Never leave a child behind, whatever happened above.
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_TIMEOUT)
        _RUNNING.discard(self)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _get_status(host: str, port: int, path: str) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@dataclass(frozen=True)
class RawResponse:
    """One response read off a raw socket (header names lower-cased)."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


def raw_request(
    port: int,
    target: str | bytes,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    host: str = "127.0.0.1",
    timeout: float = 10.0,
) -> RawResponse:
    """Send a request exactly as written (no normalisation of ``target``) and read the answer.

    ``target`` goes on the request line byte for byte, so ``..``, ``%2e%2e`` or ``%00``
    reach the server as a hostile client sends them; ``Connection: close`` is added.
    """
    raw_target = target.encode("latin-1") if isinstance(target, str) else target
    lines = [method.encode() + b" " + raw_target + b" HTTP/1.1", f"Host: {host}:{port}".encode()]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in (headers or {}).items()]
    lines.append(b"Connection: close")
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        response = http.client.HTTPResponse(sock, method=method)
        try:
            response.begin()
            body = response.read()
        finally:
            response.close()
    return RawResponse(
        status=response.status,
        reason=response.reason,
        headers={name.lower(): value for name, value in response.getheaders()},
        body=body,
    )


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def metric_value(url: str, name: str, **labels: str) -> float:
    """One sample of the daemon's ``GET /metrics`` (0.0 when absent)."""
    wanted = name + (
        "{" + ",".join(f'{key}="{value}"' for key, value in sorted(labels.items())) + "}"
        if labels
        else ""
    )
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        text = response.read().decode()
    finally:
        conn.close()
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == wanted:
            return float(value)
    return 0.0


@atexit.register
def _kill_leftovers() -> None:
    for daemon in list(_RUNNING):
        daemon.stop(timeout=2)
