"""The event loop never waits on the disk, and readers of one fill never share a file offset
(docs/behaviour.md#single-flight, docs/behaviour.md#measuring).

The faults are the kernel's, injected at the ``os`` calls: a ``close`` or ``open``
of a cache file that takes as long as the last close of a multi-GiB unlinked file
(it frees the file's blocks) or an open on a busy disk; and a platform without
``sendfile`` and ``preadv``, where asyncio reads the file itself at the description's offset
(its fallback, as under TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from oslo_config import cfg
from pytest_aiohttp import AiohttpClient

from edgecache.api.cache_api import CACHE_ADMIN_KEY
from edgecache.daemon import config
from edgecache.daemon.app import make_app
from edgecache.model import ImageMeta
from edgecache.ops.prefetch import PrefetchQueue, QueuedImage
from lab.units import MiB
from tests.functional import WAIT, Edge, eventually, file_path, start_edgecache
from tests.support.faultyglance import Fault, FaultyGlance

#: How long each injected close/open of a cache file takes.
SLOW = 0.5
#: The loop may be late by this much at most while those run (well under SLOW).
LAG_BOUND = 0.25


class Heartbeat:
    """A 10 ms timer on the loop: how late it fires is how long the loop was blocked."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, loop.time() - before - 0.01)


@contextlib.asynccontextmanager
async def heartbeat() -> AsyncIterator[Heartbeat]:
    beat = Heartbeat()
    task = asyncio.create_task(beat.run())
    try:
        yield beat
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _under(root: Path, path: object) -> bool:
    return isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(str(root))


@pytest.fixture
def slow_cache_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Every ``os.open``, ``os.fstat`` and ``os.close`` of a file under the cache takes
    SLOW seconds (an NFS server that answers late).

    Returns the names of the threads they ran in.
    """
    root = tmp_path / "cache"
    real_open, real_close, real_fstat = os.open, os.close, os.fstat
    threads: list[str] = []

    def slow() -> None:
        threads.append(threading.current_thread().name)
        time.sleep(SLOW)

    def open_(path: object, *args: object, **kwargs: object) -> int:
        if _under(root, path):
            slow()
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    def slow_if_cached(fd: int) -> None:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target.startswith(str(root)):
            slow()

    def close(fd: int) -> None:
        slow_if_cached(fd)
        real_close(fd)

    def fstat(fd: int) -> os.stat_result:
        slow_if_cached(fd)
        return real_fstat(fd)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "close", close)
    monkeypatch.setattr(os, "fstat", fstat)
    return threads


async def test_slow_opens_and_closes_of_cache_files_never_block_the_loop(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path,
    slow_cache_files: list[str],
) -> None:
    """A miss (partial created, reader opened and closed, commit), a hit (opened, fstat,
    closed), a failed fill (its partial and readers' files closed), a scrub and an
    eviction: the loop stays on time while each slow call runs."""
    edge: Edge = await start_edgecache(aiohttp_client, tmp_path / "cache", (faulty_glance.url,))
    data = os.urandom(2 * MiB)
    good = faulty_glance.add_image(data)
    bad = faulty_glance.add_image(os.urandom(MiB), fault=Fault(wrong_hash=True))

    async with heartbeat() as beat:
        miss = await edge.fetch(file_path(good["id"]), within=WAIT + 10 * SLOW)
        await edge.settled(within=WAIT + 10 * SLOW)
        hit = await edge.fetch(file_path(good["id"]), within=WAIT + 10 * SLOW)
        failed = await edge.fetch(file_path(bad["id"]), within=WAIT + 10 * SLOW)
        await edge.settled(within=WAIT + 10 * SLOW)
        verdict = await edge.app[CACHE_ADMIN_KEY].scrubber.verify(good["id"])
        assert await edge.cache.evict(good["id"])

    assert miss.status == 200 and miss.error is None and miss.body == data
    assert hit.status == 200 and hit.error is None and hit.body == data
    assert edge.requests("hit") == 1
    assert failed.broken
    assert verdict is not None and verdict.result == "ok"
    assert slow_cache_files, "no slow call ran: the test injected nothing"
    assert beat.worst < LAG_BOUND, f"the loop was blocked for {beat.worst:.2f} s"
    assert "MainThread" not in slow_cache_files  # the loop's thread made none of them


async def test_readers_of_one_fill_get_their_own_bytes_without_sendfile(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without ``os.sendfile`` (and ``os.preadv``, which the sender threads need) asyncio
    seeks and reads the file itself: readers sharing one open file description (a ``dup``)
    would read at each other's offsets."""
    monkeypatch.delattr(os, "sendfile")
    monkeypatch.delattr(os, "preadv")
    edge = await start_edgecache(aiohttp_client, tmp_path / "cache", (faulty_glance.url,))
    data = os.urandom(6 * MiB + 7)
    meta = faulty_glance.add_image(
        data, fault=Fault(trickle_chunk=256 * 1024, trickle_delay=0.02)
    )
    path = file_path(meta["id"])
    ranged = (MiB + 3, 5 * MiB)

    first = asyncio.create_task(edge.fetch(path))
    await asyncio.sleep(0.1)  # the fill runs: the others join it
    others = [asyncio.create_task(edge.fetch(path)) for _ in range(3)]
    part = asyncio.create_task(
        edge.fetch(path, headers={"Range": f"bytes={ranged[0]}-{ranged[1] - 1}"})
    )
    results = await asyncio.gather(first, *others)
    ranged_got = await part

    assert faulty_glance.count("GET", path) == 1  # one fill fed them all
    for got in results:
        assert got.status == 200 and got.error is None
        assert got.body == data
    assert ranged_got.status == 206 and ranged_got.error is None
    assert ranged_got.body == data[ranged[0]:ranged[1]]


class HungKeystone:
    """A TCP listener that accepts and never answers: a Keystone that hangs."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._peers: list[asyncio.StreamWriter] = []
        self.connections = 0

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/identity/v3"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._peers.append(writer)
        await reader.read()  # until the peer goes away; never a byte back

    async def stop(self) -> None:
        """Close every connection too: the threads waiting on them end."""
        assert self._server is not None
        self._server.close()
        for writer in self._peers:
            writer.transport.abort()
        await self._server.wait_closed()


@pytest.fixture
async def hung_keystone() -> AsyncIterator[HungKeystone]:
    keystone = HungKeystone()
    await keystone.start()
    try:
        yield keystone
    finally:
        await keystone.stop()


#: More prefetch workers than the loop's default pool has threads (at most 32).
WORKERS = 40


async def test_a_hung_keystone_stalls_neither_commits_nor_the_health_check(
    aiohttp_client: AiohttpClient, faulty_glance: FaultyGlance, tmp_path: Path,
    hung_keystone: HungKeystone,
) -> None:
    """Token validations ([keystone_authtoken]) and every prefetch worker's service token
    ([upstream_auth]) wait on a Keystone that never answers; the health check still
    answers and a fill still commits."""
    root = tmp_path / "cache"
    queue = PrefetchQueue(root / "prefetch")  # queued before start: no token needed to queue
    queue.open()
    for n in range(WORKERS):
        queue.put(QueuedImage(image_id=f"00000000-0000-4000-8000-{n:012d}", queued_at=0.0))
    queue.close()
    keystone_options = (
        f"auth_type = password\nauth_url = {hung_keystone.url}\nusername = edgecache\n"
        "password = pw\nproject_name = service\nuser_domain_id = default\n"
        "project_domain_id = default\n"
    )
    conf_file = tmp_path / "edgecache.conf"
    conf_file.write_text(
        "[DEFAULT]\nauth_strategy = keystone\n"
        f"[cache]\ndirectory = {root}\n"
        f"[upstream]\nglance_endpoints = {faulty_glance.url}\n"
        f"[prefetch]\nworkers = {WORKERS}\n"
        f"[keystone_authtoken]\nwww_authenticate_uri = {hung_keystone.url}\n"
        + keystone_options + "[upstream_auth]\n" + keystone_options
    )
    settings = config.load(["--config-file", str(conf_file)], cfg.ConfigOpts())
    app = make_app(settings)
    edge = Edge(client=await aiohttp_client(app), app=app, root=root)
    data = os.urandom(MiB)
    record = faulty_glance.add_image(data)

    validating = [
        asyncio.create_task(edge.fetch(file_path(record["id"]), headers={"X-Auth-Token": f"t{n}"},
                                       within=60))
        for n in range(20)
    ]
    try:
        prefetcher = app[CACHE_ADMIN_KEY].prefetcher
        await eventually(  # every worker has asked for its token (and waits)
            lambda: [row["state"] for row in prefetcher.progress()] == ["fetching"] * WORKERS,
            WAIT, "prefetch workers asking for tokens",
        )
        await eventually(lambda: hung_keystone.connections >= 2, WAIT, "Keystone asked")

        health = await edge.fetch("/healthcheck", within=2.0)
        assert health.status == 200

        joined = await edge.cache.fill_for(ImageMeta.from_glance(record), {})
        assert joined is not None
        async with asyncio.timeout(5.0):
            assert await edge.cache.wait_fill(joined[0])
        assert edge.data_bytes(record["id"]) == data
        assert not any(task.done() for task in validating)  # they still wait on Keystone
    finally:
        for task in validating:
            task.cancel()
        await asyncio.gather(*validating, return_exceptions=True)
