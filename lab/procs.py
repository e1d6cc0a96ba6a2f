"""The one way the lab runs a server: a child process in a group of its own.

Every launcher (Glance, Keystone, Swift, moto's S3, edgecache itself, the
benchmark's peers) is a :class:`Process`. It starts the child in a new session
with its output appended to a log file, waits until :meth:`Process.ready` says
it serves (failing with the log tail if it exits first), and stops it by its
pid: SIGTERM, then SIGKILL to its whole process group, always reaped, so no
server and no zombie outlives the test or benchmark that started it. Any still
running when the interpreter exits are stopped then.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil

from lab.logs import tail, tails
from lab.polling import WaitTimeout, wait_until

__all__ = ["Process", "StartError", "alive", "child_env", "group_pids"]

#: interpreter variables that would make another venv's Python import the wrong code
_FOREIGN_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PIP_USER", "__PYVENV_LAUNCHER__")
_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)

_RUNNING: weakref.WeakSet[Process] = weakref.WeakSet()


class StartError(RuntimeError):
    """A server did not come up; the message carries its log tail."""


def child_env(venv: Path | None = None) -> dict[str, str]:
    """This environment for a child running another venv's Python (or none).

    Variables that point an interpreter at this checkout or this venv are
    dropped; ``venv``'s bin directory goes first on PATH.
    """
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env.pop("VIRTUAL_ENV", None)
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}"
    return env


def alive(pid: int) -> bool:
    """True if ``pid`` runs; a zombie does not count (``kill -0`` would say it does)."""
    try:
        return psutil.Process(pid).status() not in _GONE
    except psutil.Error:
        return False


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``.

    By group rather than by parent: workers whose master crashed are
    re-parented, but keep the group.
    """
    found = []
    for proc in psutil.process_iter(["status"]):
        if proc.info["status"] in _GONE:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(proc.pid) == pgid:
                found.append(proc.pid)
    return sorted(found)


class Process:
    """A server child: start, wait until ready, stop by pid, reap. A context manager.

    Subclasses say when the server serves (:meth:`ready`), which logs explain a
    failure (:meth:`logs`) and what to repeat while it shuts down
    (:meth:`nudge`). ``argv`` may be set or changed before each start.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log: Path,
        name: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        ready: Callable[[], bool] | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.argv = list(argv)
        self.log = Path(log)
        self.name = name
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._probe = ready
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- state ---------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs, else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    def group(self) -> list[int]:
        """Live pids of the child's process group (itself and what it forked)."""
        return [] if self._proc is None else group_pids(self._proc.pid)

    def logs(self) -> list[Path]:
        """The files whose tails explain a failure (the output log by default)."""
        return [self.log]

    def log_tail(self, lines: int = 40) -> str:
        return tails(self.logs(), lines)

    def run_log(self) -> str:
        """What the child wrote to its output log since this start."""
        return "\n".join(tail(self.log, 1_000_000, self._log_offset))

    # -- hooks -----------------------------------------------------------------------

    def ready(self) -> bool:
        """True once the server serves; the ``ready`` callable, or at once."""
        return True if self._probe is None else self._probe()

    def nudge(self) -> None:
        """Called about once a second while a stop waits for the child to exit."""

    # -- lifecycle -------------------------------------------------------------------

    def spawn(self) -> None:
        """Start the child without waiting for it to serve."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self._log_offset = out.tell()
            # A session of its own: a Ctrl-C meant for us does not reach it before
            # stop() runs, and stop() can kill everything it forked at once.
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        _RUNNING.add(self)

    def start(self, timeout: float | None = None) -> Self:
        """Spawn the child and wait until :meth:`ready`; stop it again on any failure."""
        self.spawn()
        try:
            self.wait_ready(self.start_timeout if timeout is None else timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        def serving() -> bool:
            if not self.running:
                raise StartError(
                    f"{self.name} exited with {self.returncode} while starting\n{self.log_tail()}"
                )
            return self.ready()

        try:
            wait_until(serving, f"{self.name} to serve", timeout)
        except WaitTimeout as exc:
            raise StartError(f"{exc}\n{self.log_tail()}") from None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the child itself (no waiting)."""
        if self._proc is None:
            raise RuntimeError(f"{self.name} is not running")
        os.kill(self._proc.pid, signum)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to exit by itself; its exit status (it is reaped)."""
        proc = self._proc
        if proc is None:
            raise RuntimeError(f"{self.name} is not running")
        try:
            return proc.wait(self.stop_timeout if timeout is None else timeout)
        finally:
            if proc.returncode is not None:
                self._release()

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait, then SIGKILL the group; reaped. Idempotent; the exit status."""
        proc = self._proc
        if proc is None:
            return None
        grace = self.stop_timeout if timeout is None else timeout
        with contextlib.suppress(ProcessLookupError):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        waited = 0.0
        while proc.poll() is None and waited < grace:
            step = min(1.0, grace - waited)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(step)
            waited += step
            if proc.poll() is None:
                self.nudge()
        return self._release()

    def kill9(self) -> None:
        """SIGKILL, no grace (a crash or an OOM kill), and reap."""
        if self._proc is None:
            raise RuntimeError(f"{self.name} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._release()

    def _release(self) -> int | None:
        """Kill whatever is left of the child's group, reap the child, forget it."""
        proc, self._proc = self._proc, None
        _RUNNING.discard(self)
        if proc is None:
            return None
        # The group id stays reserved while any member lives, so this cannot hit
        # a stranger; it catches workers orphaned by a crashed master too.
        if proc.poll() is None or group_pids(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(_RUNNING):
        proc.stop(timeout=2)
