"""The py-spy raw-profile reader: self and inclusive samples, threads, idle leaves."""

from __future__ import annotations

from bench.profile_top import function, is_root, parse, render, thread_name

MAIN = "thread (0x10): MainThread;run (asyncio/base_events.py:600)"
POOL = "Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:83)"
RAW = f"""\
{MAIN};Handle._run (asyncio/events.py:80);Fill.pump (edgecache/core/fill.py:200);\
StreamReader.read (aiohttp/streams.py:40) 30
{MAIN};EpollSelector.select (selectors.py:468) 50
thread (11): hash-8fdb86e7_0;{POOL};_WorkItem.run (concurrent/futures/thread.py:58);\
Fill._hash (edgecache/core/fill.py:300) 15
thread (12): hash-0123abcd_0;Thread.run (threading.py:982);\
_worker (concurrent/futures/thread.py:81) 5
{MAIN};Handle._run (asyncio/events.py:80);Fill.pump (edgecache/core/fill.py:210) 10
not a stack line
"""


def test_names_drop_line_numbers_and_fill_ids() -> None:
    hash_frame = "Fill._hash (edgecache/core/fill.py:300)"
    assert function(hash_frame) == "Fill._hash (edgecache/core/fill.py)"
    assert function("Fill._hash (edgecache/core/fill.py:300)", lines=True).endswith(":300)")
    assert thread_name("thread (11): hash-8fdb86e7_0") == "hash-*"
    assert thread_name("thread (0x7F12): asyncio_3") == "asyncio"
    assert thread_name("Fill._hash (fill.py:3)") is None


def test_self_inclusive_threads_and_idle() -> None:
    prof = parse(RAW.splitlines())
    assert prof.total == 110
    assert prof.threads == {"MainThread": 90, "hash-*": 20}
    assert prof.idle == {"MainThread": 50, "hash-*": 5}
    pump = "Fill.pump (edgecache/core/fill.py)"
    assert prof.self_samples[pump] == 10  # the two lines of pump merge
    assert prof.inclusive[pump] == 40
    assert prof.self_samples["StreamReader.read (aiohttp/streams.py)"] == 30
    assert prof.where["Fill._hash (edgecache/core/fill.py)"] == {"hash-*": 15}
    assert "EpollSelector.select (selectors.py)" not in prof.self_samples
    assert is_root(prof, "run (asyncio/base_events.py)")  # on every busy MainThread stack


def test_idle_leaves_can_be_kept() -> None:
    prof = parse(RAW.splitlines(), keep_idle=True)
    assert prof.self_samples["EpollSelector.select (selectors.py)"] == 50
    assert not is_root(prof, "Handle._run (asyncio/events.py)")


def test_render_lists_the_top() -> None:
    text = render(parse(RAW.splitlines()), top=2)
    assert "110 samples" in text
    assert "StreamReader.read (aiohttp/streams.py)  [MainThread 100%]" in text
    assert "run (asyncio/base_events.py)" not in text  # a root frame: left out
