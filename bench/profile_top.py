"""The top of a py-spy raw (collapsed-stack) profile: where the samples are, by function and thread.

    .venv/bin/python -m bench.profile_top DIR/cold50-round1.txt --n 25

Each line of the file is one distinct stack and how many samples it got:
`thread (TID): NAME;frame;...;leaf COUNT`, a frame being `function (file:line)`. Self samples count
the leaf only (where the thread was); inclusive samples count every function on the stack once
(what it and its callees cost); frames on every stack of their threads are left out of the
inclusive list (`--roots` keeps them). A C function called straight from Python (a pool thread
running `hashlib`'s update or `os.pwrite`) has no frame of its own: its samples are its caller's
self samples (`Fill._hash` for a hashing loop). Samples whose leaf is a wait (IDLE_LEAVES: a
pool thread in its queue's get, the loop in epoll) are counted as idle per thread and left out of
both lists (`--idle` keeps them). Functions are merged across lines (`--lines` keeps them apart),
threads across ids, and per-fill thread names lose their id (`write-8fdb86e7_0` -> `write-*`).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

THREAD = re.compile(r"^thread \((?:0x)?[0-9A-Fa-f]+\): ?(.*)$")
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
#: leaves where a thread waits rather than works; py-spy's own idle test misses them on these VMs
#: (a pool thread blocked in its queue's get() is sampled as if it ran)
IDLE_LEAVES = re.compile(
    r"^(?:_worker \(concurrent/futures/thread\.py\)"  # a pool thread waiting for work
    r"|\w*Selector\.select \(selectors\.py\)"  # the event loop in epoll_wait
    r"|\w+\.wait \(threading\.py\)|_wait_for_tstate_lock \(threading\.py\))$"
)
FILL_ID = re.compile(r"-[0-9a-f]{6,}(?:_\d+)?$|_\d+$")


@dataclass
class Profile:
    """Samples per function (self and inclusive) and per thread, with each function's threads."""

    total: int = 0
    threads: Counter[str] = field(default_factory=Counter)
    idle: Counter[str] = field(default_factory=Counter)  # samples in IDLE_LEAVES, per thread
    idle_listed: bool = False  # idle samples counted in the function lists too
    self_samples: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    where: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))


def thread_name(frame: str) -> str | None:
    """`thread (123): write-8fdb86e7_0` -> `write-*`; None when the frame is not a thread's."""
    m = THREAD.match(frame)
    if not m:
        return None
    name = m.group(1).strip() or "?"
    return FILL_ID.sub(lambda g: "-*" if g.group(0).startswith("-") else "", name)


def function(frame: str, lines: bool = False) -> str:
    """`Fill._write_at (edgecache/core/fill.py:308)` -> `Fill._write_at (edgecache/core/fill.py)`"""
    m = FRAME.match(frame)
    if not m or lines or not m.group("line"):
        return frame
    return f"{m.group('func')} ({m.group('file')})"


def parse(text: Iterable[str], lines: bool = False, keep_idle: bool = False) -> Profile:
    prof = Profile(idle_listed=keep_idle)
    for raw in text:
        raw = raw.rstrip("\n")
        stack, _, count = raw.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = thread_name(frames[0])
        if thread is not None:
            frames = frames[1:]
        thread = thread or "?"
        prof.total += n
        prof.threads[thread] += n
        if not frames:
            continue
        funcs = [function(f, lines) for f in frames]
        if IDLE_LEAVES.match(function(frames[-1])):
            prof.idle[thread] += n
            if not keep_idle:
                continue
        prof.self_samples[funcs[-1]] += n
        for func in dict.fromkeys(funcs):  # once per stack, even when recursive
            prof.inclusive[func] += n
            prof.where[func][thread] += n
    return prof


def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:5.1f}%" if total else "    -"


def _threads(counts: Counter[str], total: int, top: int = 3) -> str:
    return ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in counts.most_common(top))


def is_root(prof: Profile, func: str) -> bool:
    """On every stack of every thread it appears in (a thread's bootstrap, the loop's run):
    such a function says nothing about where the time goes."""
    listed = prof.threads if prof.idle_listed else prof.threads - prof.idle
    return all(n == listed[t] for t, n in prof.where[func].items())


def render(prof: Profile, top: int, title: str = "", roots: bool = False) -> str:
    threads = ", ".join(
        f"{name} {100 * n / prof.total:.0f}% (idle {100 * prof.idle[name] / n:.0f}%)"
        for name, n in prof.threads.most_common(8)
    )
    idle = sum(prof.idle.values())
    out = [f"{title}{prof.total} samples ({prof.total / 250:.1f} thread-s at 250 Hz), "
           f"{_pct(idle, prof.total).strip()} of them idle (a pool queue's get, epoll, a wait)",
           f"threads: {threads or '-'}"]  # fmt: skip
    inclusive = Counter(
        {f: n for f, n in prof.inclusive.items() if roots or not is_root(prof, f)}
    )
    for label, counter in (("self", prof.self_samples), ("inclusive", inclusive)):
        out.append(f"\ntop {top} by {label} samples (% of all; threads: % of its own)")
        if label == "inclusive" and not roots:
            out[-1] += "; frames on every stack of their threads left out"
        for func, n in counter.most_common(top):
            where = _threads(prof.where[func], prof.inclusive[func])
            out.append(f"{_pct(n, prof.total)} {n:7d}  {func}  [{where}]")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.profile_top", description=__doc__.split("\n")[0]
    )
    p.add_argument("files", nargs="+", type=Path, help="py-spy --format raw output")
    p.add_argument("--n", type=int, default=25, help="functions per list (default 25)")
    p.add_argument("--lines", action="store_true", help="keep line numbers apart")
    p.add_argument("--thread", help="only the threads whose (merged) name starts with this")
    p.add_argument("--roots", action="store_true", help="keep frames on every stack (inclusive)")
    p.add_argument("--idle", action="store_true", help="count idle leaves in the lists too")
    args = p.parse_args(argv)
    for n, path in enumerate(args.files):
        with path.open() as f:
            text: Iterable[str] = f.readlines()
        if args.thread:
            text = [t for t in text if (thread_name(t.split(";")[0]) or "").startswith(args.thread)]
        prof = parse(text, args.lines, args.idle)
        print(("\n" if n else "") + render(prof, args.n, f"{path.name}: ", args.roots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
