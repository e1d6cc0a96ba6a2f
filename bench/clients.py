"""The load generators: parallel curl processes for image bytes, a paced client for metadata.

Image downloads run in curl (C) so that a Python client never caps a multi-GB/s peer; metadata
requests are small enough for one aiohttp loop at 200 req/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import time
from dataclasses import dataclass, field

import aiohttp

CURL_FORMAT = "%{http_code} %{size_download} %{time_starttransfer} %{time_total}"


@dataclass(frozen=True)
class Fetch:
    """One curl's view of one download; times in seconds from its own start."""

    code: int
    size: int
    first_byte: float
    total: float
    launched: float  # perf_counter() just before the process was spawned


@dataclass(frozen=True)
class Batch:
    """N downloads of one URL launched together."""

    fetches: list[Fetch]

    def ok(self, size: int) -> bool:
        return all(f.code == 200 and f.size == size for f in self.fetches)

    def failures(self, size: int) -> list[str]:
        return [f"{f.code}/{f.size}B" for f in self.fetches if f.code != 200 or f.size != size]

    @property
    def span(self) -> float:
        """First launch to last finish: curl's own clocks, offset by when each was spawned."""
        start = min(f.launched for f in self.fetches)
        return max(f.launched + f.total for f in self.fetches) - start

    @property
    def gbps(self) -> float:
        """Aggregate throughput in GB/s (10^9 bytes)."""
        return sum(f.size for f in self.fetches) / self.span / 1e9 if self.span > 0 else 0.0

    @property
    def launch_spread(self) -> float:
        """First spawn to last spawn: how long starting N curls took (part of the span)."""
        return max(f.launched for f in self.fetches) - min(f.launched for f in self.fetches)

    @property
    def slowest_first_byte(self) -> float:
        return max(f.first_byte for f in self.fetches)


def curl_many(url: str, clients: int, timeout: float) -> Batch:
    """Start `clients` curls at once and wait for all of them."""
    argv = ["curl", "-s", "-o", "/dev/null", "--max-time", f"{timeout:.0f}", "-w", CURL_FORMAT, url]
    started: list[tuple[float, subprocess.Popen[str]]] = []
    try:
        for _ in range(clients):
            launched = time.perf_counter()
            proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
            )
            started.append((launched, proc))
        fetches = []
        for launched, proc in started:
            out, _ = proc.communicate()
            fetches.append(_parse(out, launched))
        return Batch(fetches)
    finally:
        for _, proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _parse(out: str, launched: float) -> Fetch:
    try:
        code, size, first_byte, total = out.split()
        return Fetch(int(code), int(size), float(first_byte), float(total), launched)
    except ValueError:  # curl died before writing its line
        return Fetch(0, 0, 0.0, 0.0, launched)


@dataclass
class Latencies:
    """Metadata request latencies in seconds, and what went wrong."""

    seconds: list[float] = field(default_factory=list)
    errors: int = 0
    late: int = 0  # requests issued more than 5 ms after their slot: the client fell behind

    def quantile(self, q: float) -> float:
        if len(self.seconds) < 2:
            return self.seconds[0] if self.seconds else float("nan")
        return statistics.quantiles(self.seconds, n=1000, method="inclusive")[int(q * 1000) - 1]


def paced_gets(
    urls: dict[str, str], rate: float, duration: float, connections: int = 8, slice_s: float = 1.0
) -> dict[str, Latencies]:
    """GET each URL at a fixed rate (open loop), the URLs taking turns in `slice_s` slices.

    Taking turns every second puts the same drift of a shared, noisy 2-core box into every
    peer's samples, so the difference between peers means something. Connections per peer are
    capped below the origin's uWSGI threads: its keep-alive socket pins a thread per open
    connection, and more connections than threads would measure its accept queue instead.
    """
    return asyncio.run(_paced(urls, rate, duration, connections, slice_s))


async def _sessions(
    stack: contextlib.AsyncExitStack, urls: dict[str, str], connections: int
) -> dict[str, aiohttp.ClientSession]:
    """One session per peer, at most ``connections`` kept-alive connections each."""
    timeout = aiohttp.ClientTimeout(total=10)
    return {
        name: await stack.enter_async_context(aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections), timeout=timeout))
        for name in urls
    }


async def _paced(
    urls: dict[str, str], rate: float, duration: float, connections: int, slice_s: float
) -> dict[str, Latencies]:
    results = {name: Latencies() for name in urls}
    async with contextlib.AsyncExitStack() as stack:
        sessions = await _sessions(stack, urls, connections)

        async def one(name: str, record: bool) -> None:
            start = time.perf_counter()
            try:
                async with sessions[name].get(urls[name]) as resp:
                    await resp.read()
                    failed = resp.status != 200
            except (aiohttp.ClientError, TimeoutError):
                failed = True
            if not record:
                return
            if failed:
                results[name].errors += 1
            else:
                results[name].seconds.append(time.perf_counter() - start)

        # The first round of slices is not recorded: it opens the keep-alive connections and
        # pays each uWSGI thread's first request (lazy imports), which are no proxy's overhead.
        loop = asyncio.get_running_loop()
        per_slice = max(1, round(rate * slice_s))
        for rep in range(1 + max(1, round(duration / slice_s))):
            for name in urls:
                t0 = loop.time()
                tasks = []
                for i in range(per_slice):
                    delay = t0 + i / rate - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    elif delay < -0.005 and rep:
                        results[name].late += 1
                    tasks.append(asyncio.create_task(one(name, record=rep > 0)))
                await asyncio.gather(*tasks)  # drain before the next peer's turn
    return results


def paired_gets(
    urls: dict[str, str], direct: str, rate: float, duration: float, connections: int = 8
) -> dict[str, Latencies]:
    """GET every URL at the same moments (one tick per ``1/rate`` s), and keep, for each
    proxy, its latency minus direct Glance's in the same tick.

    The origin stalls now and then (~0.1 s every few seconds under uWSGI here, for direct
    clients too); a peer measured while it stalls gets a p99 that is Glance's, not its own.
    In one tick every peer meets the same origin, so the difference is what the proxy adds.
    ``results[direct]`` holds direct Glance's own latencies.
    """
    return asyncio.run(_paired(urls, direct, rate, duration, connections))


async def _paired(
    urls: dict[str, str], direct: str, rate: float, duration: float, connections: int
) -> dict[str, Latencies]:
    results = {name: Latencies() for name in urls}
    async with contextlib.AsyncExitStack() as stack:
        sessions = await _sessions(stack, urls, connections)

        async def one(name: str) -> float | None:
            start = time.perf_counter()
            try:
                async with sessions[name].get(urls[name]) as resp:
                    await resp.read()
                    if resp.status != 200:
                        return None
            except (aiohttp.ClientError, TimeoutError):
                return None
            return time.perf_counter() - start

        async def tick(record: bool) -> None:
            got = dict(zip(urls, await asyncio.gather(*(one(n) for n in urls)), strict=True))
            if record:
                record_tick(results, direct, got)

        loop = asyncio.get_running_loop()
        ticks, warm = max(2, round(rate * duration)), max(1, round(rate))  # 1 s unrecorded
        t0, tasks = loop.time(), []
        for i in range(warm + ticks):
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(tick(record=i >= warm)))
        await asyncio.gather(*tasks)
    return results


def record_tick(
    results: dict[str, Latencies], direct: str, got: dict[str, float | None]
) -> None:
    """One tick of :func:`paired_gets`: direct Glance's latency, each proxy's minus it
    (None: that request failed; a failed direct request leaves nothing to compare with)."""
    base = got[direct]
    for name, seconds in got.items():
        if seconds is None or base is None:
            results[name].errors += 1
        elif name == direct:
            results[name].seconds.append(seconds)
        else:
            results[name].seconds.append(seconds - base)
