"""edgecache itself as the lab runs it: the one config writer and the one launcher.

:class:`EdgecacheConfig` holds an ``edgecache.conf`` as sections of options and
:func:`write_config` is the only code in the lab, the tests and the benchmarks
that writes one, so a renamed or new option is changed in one place.
:class:`EdgecacheProcess` runs ``edgecache serve --config-file FILE`` the way
operators start it, in a session of its own with its output in a log file,
and waits until ``GET /versions`` answers 200::

    with EdgecacheProcess(tmp_path, glance_endpoints=[glance.url]) as edge:
        urllib.request.urlopen(f"{edge.url}/v2/images/{image_id}/file")
        edge.kill9()
        edge.restart()          # same config file, same port

Like every :class:`~lab.procs.Process` it is stopped by its pid.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final, Self

from lab.httpclient import request as http_request
from lab.httpclient import status_of
from lab.ports import LOOPBACK, free_port
from lab.procs import Process, StartError

__all__ = [
    "REPO_ROOT",
    "EdgecacheConfig",
    "EdgecacheProcess",
    "StartError",
    "edgecache_env",
    "metric_value",
    "run_cli",
    "write_config",
]

REPO_ROOT: Final = Path(__file__).resolve().parents[1]
START_TIMEOUT: Final = 20.0
STOP_TIMEOUT: Final = 10.0

Sections = dict[str, dict[str, str]]


def write_config(path: Path, sections: Mapping[str, Mapping[str, str]]) -> Path:
    """Write ``sections`` as an INI file at ``path`` (``[DEFAULT]`` first if present)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "\n".join(
            f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())
            for section, values in sections.items()
        )
    )
    return path


class EdgecacheConfig:
    """An edgecache configuration: noauth on 127.0.0.1 in front of ``glance_endpoints``.

    ``options`` adds or overrides values by section (``{"DEFAULT": {...}}``); a
    value of None drops a default, to write a configuration that lacks it.
    """

    def __init__(
        self,
        *,
        glance_endpoints: Iterable[str],
        cache_dir: Path,
        port: int | None = None,
        max_size: str = "1G",
        stall_time: int | None = None,
        auth_cache_ttl: int | None = None,
        options: Mapping[str, Mapping[str, str | None]] | None = None,
    ) -> None:
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        self.cache_dir = Path(cache_dir)
        self.sections: Sections = {
            "DEFAULT": {
                "bind_host": self.host,
                "bind_port": str(self.port),
                "auth_strategy": "noauth",
            },
            "cache": {"directory": str(self.cache_dir), "max_size": max_size},
            "upstream": {"glance_endpoints": ",".join(e.rstrip("/") for e in glance_endpoints)},
        }
        if stall_time is not None:
            self.sections["cache"]["stall_time"] = str(stall_time)
        if auth_cache_ttl is not None:
            self.sections["upstream"]["auth_cache_ttl"] = str(auth_cache_ttl)
        self.merge(options or {})

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def merge(self, options: Mapping[str, Mapping[str, str | None]]) -> None:
        for section, values in options.items():
            target = self.sections.setdefault(section, {})
            for key, value in values.items():
                if value is None:
                    target.pop(key, None)
                else:
                    target[key] = value

    def write(self, path: Path) -> Path:
        return write_config(path, self.sections)


def edgecache_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment for an edgecache child: the checkout importable, no systemd socket.

    ``extra`` (e.g. a test's own ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC``) goes on top.
    """
    env = dict(os.environ)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CACHE_DIRECTORY"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
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
        env=edgecache_env(),
        cwd=REPO_ROOT,
        check=False,
        stdin=subprocess.DEVNULL,
    )


class EdgecacheProcess(Process):
    """``edgecache serve`` as a child process, with its own config file and cache directory.

    ``command`` runs edgecache (default: this interpreter's ``-m edgecache``; the
    benchmark passes an installed console script).
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        glance_endpoints: Iterable[str],
        max_size: str = "1G",
        stall_time: int | None = 60,
        auth_cache_ttl: int | None = 60,
        bind_port: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = START_TIMEOUT,
        options: Mapping[str, Mapping[str, str | None]] | None = None,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = EdgecacheConfig(
            glance_endpoints=glance_endpoints,
            cache_dir=Path(cache_dir) if cache_dir is not None else self.workdir / "cache",
            port=bind_port, max_size=max_size, stall_time=stall_time,
            auth_cache_ttl=auth_cache_ttl, options=options,
        )
        self.config_file = self.workdir / "edgecache.conf"
        self.config.write(self.config_file)
        self.extra_env = dict(env or {})
        super().__init__(
            [*(command or (sys.executable, "-m", "edgecache")), "serve", "--config-file",
             str(self.config_file)],
            log=self.workdir / "edgecache.log",
            name=f"edgecache at {self.config.url}",
            env=edgecache_env(self.extra_env),
            cwd=self.workdir,
            start_timeout=start_timeout,
            stop_timeout=STOP_TIMEOUT,
        )
        self.starts = 0

    # -- configuration -------------------------------------------------------------

    @property
    def options(self) -> Sections:
        return self.config.sections

    def reconfigure(self, options: Mapping[str, Mapping[str, str | None]]) -> None:
        """Merge ``options`` into the config file (a running daemon sees them on SIGHUP)."""
        self.config.merge(options)
        self.config.write(self.config_file)

    # -- paths and state -------------------------------------------------------------

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def port(self) -> int:
        return self.config.port

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def cache_dir(self) -> Path:
        return self.config.cache_dir

    @property
    def data_dir(self) -> Path:
        return self.cache_dir / "data"

    @property
    def incomplete_dir(self) -> Path:
        return self.cache_dir / "incomplete"

    @property
    def log_file(self) -> Path:
        return self.log

    @property
    def pid(self) -> int:
        """The running daemon's pid; an error when it is not running."""
        pid = super().pid
        if pid is None:
            raise RuntimeError("the daemon is not running")
        return pid

    def log_text(self) -> str:
        """Everything the daemon(s) wrote so far (all runs, appended)."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- lifecycle -------------------------------------------------------------------

    def ready(self) -> bool:
        return status_of(f"{self.url}/versions") == 200

    def spawn(self) -> None:
        self.starts += 1
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"----- start #{self.starts} -----\n".encode())
        super().spawn()

    def restart(self) -> Self:
        """Stop (if running) and start again: same config file, same port, same cache."""
        self.stop()
        return self.start()


def metric_value(url: str, name: str, **labels: str) -> float:
    """One sample of an edgecache's ``GET /metrics`` (0.0 when absent)."""
    wanted = name + (
        "{" + ",".join(f'{key}="{value}"' for key, value in sorted(labels.items())) + "}"
        if labels
        else ""
    )
    host, port = url.removeprefix("http://").rsplit(":", 1)
    text = http_request(int(port), "GET", "/metrics", timeout=5, host=host).body.decode()
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == wanted:
            return float(value)
    return 0.0
