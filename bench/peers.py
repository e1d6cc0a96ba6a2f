"""The servers the benchmark compares, one class each, behind one tiny interface.

Every cache sits in front of the same real Glance (no cache of its own, file store) and is fetched
by the same clients, so only the cache in between differs (docs/behaviour.md#quality-bars). A
peer only has to say where it listens, how to empty its cache, which processes to weigh, and how
to start and stop.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from bench.procs import Trash
from lab.edgecache import EdgecacheProcess
from lab.httpclient import status_of
from lab.procs import Process, StartError
from lab.units import MiB

if TYPE_CHECKING:
    from lab.glance import LocalGlance



#: kept-alive origin connections a restarted peer opens again before a cold batch (warm_upstream)
WARM_CONNECTIONS = 4


class Peer:
    """A server under test that serves `image_id` at `{url}/v2/images/{image_id}/file`."""

    name = "peer"
    caches = True  # False: every request reads the origin's store (the reference, not a cache)

    def __init__(self, image_id: str, origin: LocalGlance) -> None:
        self.image_id = image_id
        self.origin = origin  # the Glance whose image-data GETs count as upstream fetches

    @property
    def url(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        """Start the server and wait until it answers."""

    def stop(self) -> None:
        """Stop every process `start` started (by pid)."""

    def empty_cache(self) -> None:
        """Make the next request for the image a cold miss."""

    def pids(self) -> list[int]:
        """Root pids of the processes whose memory counts for this peer."""
        raise NotImplementedError

    def answers(self) -> bool:
        """True once something answers HTTP at the peer's URL (any status)."""
        return status_of(self.url + "/") is not None

    @property
    def file_url(self) -> str:
        return f"{self.url}/v2/images/{self.image_id}/file"

    @property
    def meta_url(self) -> str:
        return f"{self.url}/v2/images/{self.image_id}"

    def upstream_gets(self, at_least: int | None = None) -> int | None:
        """Image-data GETs the origin Glance has finished; None when the peer is the origin.

        Glance logs a request only once its body is sent, so `at_least` waits a little for it.
        """
        path = f"/v2/images/{self.image_id}/file"
        return self.origin.count_requests("GET", path, at_least=at_least, timeout=10)

    def loop_lag_buckets(self) -> dict[float, float] | None:
        """Cumulative event-loop lag histogram (upper bound s -> count), if the peer exports one."""
        return None

    def warm_upstream(self, connections: int = WARM_CONNECTIONS) -> None:
        """After a restart: metadata GETs through the peer, a few at once, so it holds kept-alive
        connections to the origin again, on uWSGI threads that have served before.

        A cache serving a cloud has them; a restart (the only way to empty nginx and edgecache)
        drops them, and Varnish, emptied by a ban, keeps its own. Without this a restarted peer's
        first cold miss also pays a TCP connect and a uWSGI thread's first request (its lazy
        imports: tens to hundreds of ms). No image byte moves, so the miss stays cold.
        """
        with ThreadPoolExecutor(connections) as pool:
            for _ in range(2):
                statuses = list(pool.map(lambda _: status_of(self.meta_url), range(connections)))
                if any(status != 200 for status in statuses):
                    raise RuntimeError(f"{self.name}: warming its upstream answered {statuses}")


class GlancePeer(Peer):
    """Glance itself: the no-cache origin read directly (reference) or a Glance with its own cache.

    Its lifetime is the run's, not the peer's: other peers front it and the image is uploaded to it
    before any peer starts, so `start`/`stop` do nothing here.
    """

    def __init__(self, name: str, glance: LocalGlance, image_id: str, caching: bool) -> None:
        super().__init__(image_id, glance)
        self.name = name
        self.caches = caching

    @property
    def url(self) -> str:
        return str(self.origin.url).rstrip("/")

    def pids(self) -> list[int]:
        return [self.origin.pid] if self.origin.pid else []

    def upstream_gets(self, at_least: int | None = None) -> int | None:
        return None  # Glance reads its own store: there is no upstream to count

    def empty_cache(self) -> None:
        if not self.caches:
            return
        req = urllib.request.Request(f"{self.url}/v2/cache/{self.image_id}", method="DELETE")
        try:
            with urllib.request.urlopen(req, timeout=60):
                pass
        except urllib.error.HTTPError as err:
            if err.code != 404:  # 404: not cached, already cold
                raise RuntimeError(f"{self.name}: DELETE /v2/cache answered {err.code}") from err


class NginxPeer(Peer):
    """nginx proxy_cache with the lock on: one upstream fetch, waiters held until it completes."""

    name = "nginx"

    def __init__(self, root: Path, origin: LocalGlance, image_id: str, port: int, trash: Trash):
        super().__init__(image_id, origin)
        self.root, self.port, self.trash = root, port, trash
        self.daemon: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> str:
        upstream = str(self.origin.url).split("://", 1)[1].rstrip("/")
        r = self.root
        # Lock timeout and age far above a fill's length: with nginx's 5 s default a waiter gives
        # up and fetches uncached, and nginx would be measured with more than one upstream GET.
        return f"""
daemon off;
master_process on;
user root;
worker_processes auto;
worker_rlimit_nofile 16384;
pid {r}/nginx.pid;
error_log {r}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    client_body_temp_path {r}/tmp/body;
    proxy_temp_path {r}/tmp/proxy;
    fastcgi_temp_path {r}/tmp/fastcgi;
    uwsgi_temp_path {r}/tmp/uwsgi;
    scgi_temp_path {r}/tmp/scgi;
    proxy_cache_path {r}/cache levels=1:2 keys_zone=images:10m max_size=20g inactive=7d
                     use_temp_path=off;
    upstream glance {{ server {upstream}; keepalive 8; }}
    server {{
        listen 127.0.0.1:{self.port};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_read_timeout 600s;
        location ~ ^/v2/images/[^/]+/file$ {{
            proxy_pass http://glance;
            proxy_cache images;
            proxy_cache_key $uri;
            proxy_cache_valid 200 7d;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 1h;
            proxy_cache_lock_age 1h;
            add_header X-Cache-Status $upstream_cache_status;
        }}
        location = /healthcheck {{ return 200 "OK\\n"; }}
        location / {{ proxy_pass http://glance; }}
    }}
}}
"""

    def start(self) -> None:
        for sub in ("tmp", "cache"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        conf = self.root / "nginx.conf"
        conf.write_text(self._config())
        argv = ["nginx", "-p", str(self.root), "-c", str(conf), "-e", str(self.root / "error.log")]
        self.daemon = Process(argv, log=self.root / "stdout.log", name="nginx", start_timeout=15,
                              stop_timeout=20, ready=self.answers)
        self.daemon.start()

    def stop(self) -> None:
        if self.daemon:
            self.daemon.stop()  # SIGTERM to the master: fast shutdown, workers follow

    def empty_cache(self) -> None:
        # The keys live in shared memory too, so a restart is part of emptying.
        self.stop()
        self.trash.move(self.root / "cache")
        self.start()
        self.warm_upstream()

    def pids(self) -> list[int]:
        pid = self.daemon.pid if self.daemon else None
        return [] if pid is None else [pid]


class VarnishPeer(Peer):
    """Varnish with RAM (malloc) storage; streaming is on by default and kept on in the VCL."""

    name = "varnish"

    def __init__(
        self, root: Path, origin: LocalGlance, image_id: str, port: int, admin_port: int, ram: int
    ):
        super().__init__(image_id, origin)
        self.root, self.port, self.admin_port, self.ram = root, port, admin_port, ram
        self.daemon: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _vcl(self) -> str:
        host, port = str(self.origin.url).split("://", 1)[1].rstrip("/").rsplit(":", 1)
        return f"""vcl 4.1;
backend glance {{
    .host = "{host}";
    .port = "{port}";
    .first_byte_timeout = 600s;
    .between_bytes_timeout = 600s;
}}
sub vcl_recv {{
    if (req.url == "/healthcheck") {{ return (synth(200, "OK")); }}
    if (req.url !~ "^/v2/images/[^/]+/file$") {{ return (pass); }}
}}
sub vcl_backend_response {{
    set beresp.ttl = 7d;
    set beresp.do_stream = true;
}}
"""

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "default.vcl").write_text(self._vcl())
        secret = self.root / "secret"
        if not secret.exists():
            secret.write_text("bench-varnish-secret\n")
        argv = [
            "varnishd", "-F", "-j", "none",
            "-n", str(self.root / "work"),
            "-a", f"127.0.0.1:{self.port}",
            "-T", f"127.0.0.1:{self.admin_port}",
            "-S", str(secret),
            "-f", str(self.root / "default.vcl"),
            "-s", f"malloc,{self.ram // MiB}M",
            # idle client connections kept 60 s (its default is 5 s), as edgecache keeps them
            "-p", "timeout_idle=60",
        ]  # fmt: skip
        self.daemon = Process(argv, log=self.root / "varnishd.log", name="varnishd",
                              start_timeout=30, stop_timeout=20, ready=self.answers)
        self.daemon.start()

    def stop(self) -> None:
        if self.daemon:
            self.daemon.stop()

    def empty_cache(self) -> None:
        # A request ban is checked on the next lookup, which evicts the object and refetches it.
        self.admin("ban", "req.url", "~", ".")

    def admin(self, *command: str) -> str:
        argv = ["varnishadm", "-T", f"127.0.0.1:{self.admin_port}", "-S", str(self.root / "secret")]
        done = subprocess.run(argv + list(command), capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"varnishadm {' '.join(command)}: {done.stdout}{done.stderr}")
        return done.stdout

    def pids(self) -> list[int]:
        pid = self.daemon.pid if self.daemon else None
        return [] if pid is None else [pid]


class EdgecachePeer(Peer):
    """edgecache itself, from this checkout's virtualenv, in front of a Glance."""

    def __init__(
        self,
        name: str,
        root: Path,
        origin: LocalGlance,
        image_id: str,
        port: int,
        trash: Trash,
        executable: Path,
        also_empty: GlancePeer | None = None,
    ):
        super().__init__(image_id, origin)
        self.name = name
        self.root, self.port, self.trash, self.executable = root, port, trash, executable
        self.also_empty = also_empty  # a caching Glance behind it: empty both for a cold miss
        self.daemon: EdgecacheProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if not self.executable.exists():
            raise StartError(f"{self.executable} not found")
        self.daemon = EdgecacheProcess(
            self.root, glance_endpoints=[str(self.origin.url)], max_size="20G",
            stall_time=None, auth_cache_ttl=None, bind_port=self.port, start_timeout=30,
            command=[str(self.executable)],
        )
        self.daemon.start()
        status = status_of(self.url + "/metrics")
        if status != 200:
            self.stop()
            raise StartError(f"GET /metrics answered {status}")

    def stop(self) -> None:
        if self.daemon:
            self.daemon.stop()

    def empty_cache(self) -> None:
        self.stop()
        self.trash.move(self.root / "cache")
        if self.also_empty:
            self.also_empty.empty_cache()
        self.start()
        self.warm_upstream()

    def pids(self) -> list[int]:
        return [self.daemon.pid] if self.daemon and self.daemon.running else []

    def loop_lag_buckets(self) -> dict[float, float] | None:
        """`edgecache_event_loop_lag_seconds` buckets from /metrics (a 10 ms timer's lateness)."""
        try:
            with urllib.request.urlopen(self.url + "/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        buckets = {
            float(m.group(1)): float(m.group(2))
            for m in map(LAG_BUCKET.match, text.splitlines())
            if m
        }
        return buckets or None


LAG_BUCKET = re.compile(r'^edgecache_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$')


def ensure_debian_packages(commands: dict[str, str]) -> None:
    """Install the peers' Debian packages when their commands are missing (root, as on CI)."""
    missing = sorted({pkg for cmd, pkg in commands.items() if shutil.which(cmd) is None})
    if not missing:
        return
    print(f"installing {' '.join(missing)} with apt-get", flush=True)
    env_cmd = ["env", "DEBIAN_FRONTEND=noninteractive"]
    subprocess.run([*env_cmd, "apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*env_cmd, "apt-get", "install", "-y", "-q", *missing], check=True)


def image_metadata(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        data: dict[str, object] = json.load(resp)
        return data
