"""A WSGI application under uWSGI: how the lab runs Glance and Keystone.

Neither ships a standalone server any more. Both run with ``lazy-apps``, so
each worker imports the application itself, seconds after the first one
answers: readiness waits for every worker, which makes timings repeatable and
avoids stopping a worker mid-import (it would ignore the graceful signal).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Self

from lab.httpclient import request
from lab.ports import LOOPBACK, PortTaken, on_free_port
from lab.procs import Process, StartError, group_pids

__all__ = ["UwsgiApp", "UwsgiService", "uwsgi_ini"]

_APP_READY = re.compile(r"WSGI app \d+ \(mountpoint='[^']*'\) ready in .* pid: (\d+)")


def uwsgi_ini(module: str, socket_lines: str, processes: int, threads: int, extra: str) -> str:
    """The ``[uwsgi]`` section both services share.

    die-on-term and the master-start hook turn SIGTERM into a graceful shutdown;
    need-app makes a broken configuration exit instead of answering 500 forever.
    """
    return f"""\
[uwsgi]
module = {module}
{socket_lines}master = true
processes = {processes}
threads = {threads}
enable-threads = true
lazy-apps = true
need-app = true
die-on-term = true
hook-master-start = unix_signal:15 gracefully_kill_them_all
thunder-lock = true
buffer-size = 65535
worker-reload-mercy = 15
{extra}"""


class UwsgiApp(Process):
    """uWSGI's master (pyuwsgi runs it in the venv's Python) serving one app on one port.

    Ready once our own uWSGI has bound the port, ``GET probe_path`` answers
    ``ready_status`` and every worker has loaded the app.
    """

    def __init__(
        self,
        venv: Path,
        ini: Path,
        *,
        port: int,
        processes: int,
        probe_path: str,
        ready_status: int,
        log: Path,
        name: str,
        env: Mapping[str, str],
        cwd: Path,
        extra_logs: tuple[Path, ...] = (),
        stop_timeout: float = 20.0,
    ) -> None:
        super().__init__(
            [str(venv / "bin" / "uwsgi"), "--ini", str(ini)],
            log=log, name=name, env=env, cwd=cwd, stop_timeout=stop_timeout,
        )
        self.port = port
        self.processes = processes
        self.probe_path = probe_path
        self.ready_status = ready_status
        self.extra_logs = extra_logs
        self._answered = False

    def logs(self) -> list[Path]:
        return [self.log, *self.extra_logs]

    def spawn(self) -> None:
        self._answered = False
        super().spawn()

    def wait_ready(self, timeout: float) -> None:
        try:
            super().wait_ready(timeout)
        except StartError:
            if "Address already in use" in self.run_log():
                raise PortTaken(f"port {self.port} is in use\n{self.log_tail()}") from None
            raise

    def ready(self) -> bool:
        run_log = self.run_log()
        # Only trust an answer once our own uWSGI has the port: something else
        # could be listening there.
        if not self._answered and f"bound to TCP address {LOOPBACK}:{self.port} " in run_log:
            try:
                status = request(self.port, "GET", self.probe_path, timeout=2).status
            except OSError:
                status = 0
            if status == 500:
                raise StartError(f"{self.name} failed to load (GET {self.probe_path} -> 500)\n"
                                 f"{self.log_tail()}")
            self._answered = status == self.ready_status
        return self._answered and len(set(_APP_READY.findall(run_log))) >= self.processes

    def nudge(self) -> None:
        """Repeat the graceful SIGHUP to workers that were still importing the app.

        Such a worker ignored the master's broadcast, and the master would wait
        for it forever.
        """
        master = self.pid
        for pid in self.group():
            if pid != master:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGHUP)


class UwsgiService:
    """What a service run under uWSGI (Glance, Keystone) shares: its layout under
    ``state_dir``, its address, its one master process."""

    state_dir: Path
    venv: Path
    port: int
    _server: UwsgiApp | None
    _master: int | None

    def start(self, timeout: float = 60) -> None:
        raise NotImplementedError

    def _launch(
        self, timeout: float, venv_hint: str, start_on: Callable[[int, float], None]
    ) -> None:
        """Run ``start_on(port, deadline)`` on a free port until the service serves.

        Nothing when it runs already; on any failure what was started is stopped.
        """
        if self.running:
            return
        if not (self.venv / "bin" / "uwsgi").is_file():
            raise RuntimeError(f"no uwsgi in {self.venv}: call {venv_hint}() first")
        deadline = time.monotonic() + timeout
        try:
            on_free_port(self.port, lambda port: start_on(port, deadline))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop uWSGI by its pid (gracefully, then SIGKILL to its group), reap it. Idempotent."""
        self._stop_server()
        self.pidfile.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "uwsgi.pid"

    @property
    def etc_dir(self) -> Path:
        return self.state_dir / "etc"

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
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The uWSGI master's pid while it runs, else None."""
        return None if self._server is None else self._server.pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    def process_group(self) -> list[int]:
        """Live pids of this instance (master and workers); empty once stopped."""
        return [] if self._master is None else group_pids(self._master)

    def _serve(self, server: UwsgiApp, ready_within: float) -> None:
        """Spawn ``server`` and wait until every worker answers."""
        self._server = server
        server.spawn()
        self._master = server.pid
        server.wait_ready(max(0.0, ready_within))

    def _stop_server(self) -> None:
        if self._server is not None:
            self._server.stop()
