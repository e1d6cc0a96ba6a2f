"""The load generators: parallel curl processes for image bytes, a paced client for metadata.

Image downloads run in curl (C) so that a Python client never caps a multi-GB/s peer; metadata
requests are small enough for one aiohttp loop at 200 req/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
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

    by_tag: dict[str, float] = field(default_factory=dict)  # TAG query value -> seconds
    errors: int = 0
    late: int = 0  # requests issued more than 5 ms after their slot: the client fell behind

    @property
    def seconds(self) -> list[float]:
        return list(self.by_tag.values())

    def quantile(self, q: float) -> float:
        seconds = self.seconds
        if len(seconds) < 2:
            return seconds[0] if seconds else float("nan")
        return statistics.quantiles(seconds, n=1000, method="inclusive")[int(q * 1000) - 1]


#: the query parameter naming each metadata request, so the origin's own log line for it can
#: be found (:func:`outside_origin`); Glance ignores unknown query parameters on a GET
TAG = "bench_req"


def paced_gets(
    urls: dict[str, str], rate: float, duration: float, connections: int = 8, slice_s: float = 1.0
) -> dict[str, Latencies]:
    """GET each URL at a fixed rate (open loop), the URLs taking turns in `slice_s` slices.

    Every request carries ``?bench_req=<call>.<peer>.<n>`` (:data:`TAG`; ``call`` is new on
    each call, as the origin's log outlives it); a recorded one's latency is kept under that tag.

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

        call, sequence = secrets.token_hex(4), itertools.count()

        async def one(name: str, record: bool) -> None:
            tag = f"{call}.{name}.{next(sequence)}"
            start = time.perf_counter()
            try:
                async with sessions[name].get(urls[name], params={TAG: tag}) as resp:
                    await resp.read()
                    failed = resp.status != 200
            except (aiohttp.ClientError, TimeoutError):
                failed = True
            if not record:
                return
            if failed:
                results[name].errors += 1
            else:
                results[name].by_tag[tag] = time.perf_counter() - start

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


def outside_origin(lat: Latencies, origin_msecs: dict[str, int]) -> Latencies:
    """Each tagged request's latency minus the time the origin itself logged for it.

    The origin's own time varies request by request (uWSGI here stalls single requests for
    0.1-0.3 s every few seconds, on one thread while the next request is fast), so a proxy's
    end-to-end p99 says where those stalls fell. What is left outside the origin's time is
    the client's hop, plus the proxy's whole cost when there is one: the difference between a
    proxy's figure and direct Glance's is what the proxy adds. A request the origin logged
    twice (a proxy that asked again) keeps its first line: the second is the proxy's cost.
    """
    out = Latencies(errors=lat.errors, late=lat.late)
    for tag, seconds in lat.by_tag.items():
        msecs = origin_msecs.get(tag)
        if msecs is None:
            out.errors += 1  # answered without the origin: nothing to subtract
        else:
            out.by_tag[tag] = max(0.0, seconds - msecs / 1000)
    return out
