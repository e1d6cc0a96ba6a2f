"""Virtualenvs for the OpenStack services the lab runs, and where lab state lives.

Glance, Keystone and Swift pin far too many packages to share edgecache's
environment, so each gets a virtualenv of its own below the state root. They
are built once and shared: between test runs, and between checkouts that point
``EDGECACHE_STATE_DIR`` at the same folder (a file lock serialises builders).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from lab.logs import say
from lab.procs import child_env

__all__ = ["VenvSpec", "default_state_root", "ensure_venv", "file_lock", "run_logged"]

#: written only after pip succeeded, so a broken install is redone, never trusted
_READY_MARKER = ".edgecache-ready"
_LOG_TAIL_LINES = 40


def default_state_root() -> Path:
    """Where venvs and scratch state live when the caller does not say.

    A checkout keeps everything in its git-ignored ``.state`` so that a developer
    can inspect or delete it; ``EDGECACHE_STATE_DIR`` overrides that.
    """
    env = os.environ.get("EDGECACHE_STATE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    repo = Path(__file__).resolve().parents[1]
    if (repo / "pyproject.toml").is_file():
        return repo / ".state"
    return Path.home() / ".cache" / "edgecache"


def run_logged(cmd: list[str], env: Mapping[str, str], what: str) -> None:
    """Run ``cmd`` to completion, echoing its output to stderr; raise with the tail on failure.

    Output goes through Python rather than straight to fd 2 so that it also works
    when ``sys.stderr`` is replaced (pytest's capsys has no file descriptor).
    """
    lines: deque[str] = deque(maxlen=_LOG_TAIL_LINES)
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
            lines.append(line.rstrip("\n"))
            sys.stderr.write(line)
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"{what} failed (exit {rc}):\n" + "\n".join(lines))


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialise provisioning between processes (parallel test runs, other checkouts)."""
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass(frozen=True)
class VenvSpec:
    """What one service's venv holds: its folder name, pip requirements and entry points."""

    name: str
    requirements: tuple[str, ...]
    #: bin/ entries that must exist for the venv to count as built
    scripts: tuple[str, ...] = ()
    #: packages pip must take as wheels (no compiler or headers on the machine)
    only_binary: tuple[str, ...] = ()
    #: how long a build takes, for the progress line
    expect: str = "takes ~20-40 s"

    def stamp(self) -> str:
        """The marker's text: a change of requirements or Python means a rebuild."""
        major, minor = sys.version_info[:2]
        return " ".join(self.requirements) + f" python{major}.{minor}\n"

    def built(self, venv: Path) -> bool:
        marker = venv / _READY_MARKER
        return (
            marker.is_file()
            and marker.read_text() == self.stamp()
            # exists() follows the symlink: a removed base interpreter means rebuild.
            and (venv / "bin" / "python").exists()
            and all((venv / "bin" / script).is_file() for script in self.scripts)
        )


def ensure_venv(root: Path, spec: VenvSpec) -> Path:
    """``root/spec.name`` with ``spec``'s requirements installed, built if needed."""
    root = Path(root).resolve()
    venv = root / spec.name
    if spec.built(venv):
        return venv
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f".{spec.name}.lock"):
        if spec.built(venv):  # another process finished it while we waited
            return venv
        if not sys.executable:
            raise RuntimeError("cannot create a venv: sys.executable is unknown")
        started = time.monotonic()
        if venv.exists():
            say("venv", f"removing incomplete or outdated {venv}")
            shutil.rmtree(venv)
        say("venv", f"creating {venv} with {sys.executable}")
        run_logged([sys.executable, "-m", "venv", str(venv)], child_env(), "venv creation")
        say("venv", f"installing {' '.join(spec.requirements)} ({spec.expect})")
        binary = [arg for pkg in spec.only_binary for arg in ("--only-binary", pkg)]
        run_logged(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off",
             *binary, *spec.requirements],
            child_env(venv),
            f"pip install into {venv}",
        )
        (venv / _READY_MARKER).write_text(spec.stamp())
        say("venv", f"{venv} ready in {time.monotonic() - started:.1f} s")
    return venv
