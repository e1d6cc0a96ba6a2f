"""Checks of the FaultyGlance test server itself (tests/support/faultyglance.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import aiohttp
import pytest

from lab.units import MiB
from tests.support.faultyglance import Fault, FaultyGlance


@pytest.fixture
async def fg() -> AsyncIterator[FaultyGlance]:
    async with FaultyGlance() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def _raw_get(url: str, path: str) -> tuple[bytes, bytes]:
    """Blocking raw HTTP/1.1 GET; returns (header block, body read until EOF)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        raw = bytearray()
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = bytes(raw).partition(b"\r\n\r\n")
    return head, body


async def _read_until_error(resp: aiohttp.ClientResponse) -> tuple[bytes, BaseException | None]:
    got = bytearray()
    try:
        async for chunk in resp.content.iter_any():
            got += chunk
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        return bytes(got), exc
    return bytes(got), None


async def test_metadata_and_full_body(fg: FaultyGlance, session: aiohttp.ClientSession) -> None:
    data = os.urandom(3 * MiB + 17)
    meta = fg.add_image(data, image_id="img-1")
    assert meta["size"] == len(data)
    assert meta["checksum"] == hashlib.md5(data).hexdigest()
    assert meta["os_hash_algo"] == "sha512"
    assert meta["os_hash_value"] == hashlib.sha512(data).hexdigest()

    async with session.get(f"{fg.url}/v2/images/img-1") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        shown = await resp.json()
    for key in ("id", "status", "size", "checksum", "os_hash_algo", "os_hash_value", "created_at"):
        assert shown[key] == meta[key]
    assert shown["self"] == "/v2/images/img-1"
    assert shown["file"] == "/v2/images/img-1/file"
    assert shown["schema"] == "/v2/schemas/image"
    assert (shown["disk_format"], shown["container_format"]) == ("raw", "bare")

    async with session.get(fg.file_url("img-1"), headers={"X-OpenStack-Request-ID": "abc"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["Content-Length"] == str(len(data))
        assert resp.headers["Content-MD5"] == meta["checksum"]
        assert resp.headers["x-openstack-request-id"] == "req-abc"
        assert "Transfer-Encoding" not in resp.headers
        body = await resp.read()
    assert hashlib.sha512(body).hexdigest() == meta["os_hash_value"]

    async with session.head(fg.file_url("img-1")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(data))


async def test_optional_hashes_and_lying_metadata(
    fg: FaultyGlance, session: aiohttp.ClientSession
) -> None:
    meta = fg.add_image(b"abc", image_id="bare", checksum=None, os_hash_algo=None, size=None)
    assert (meta["checksum"], meta["os_hash_algo"], meta["os_hash_value"], meta["size"]) == (
        None,
        None,
        None,
        None,
    )
    async with session.get(fg.file_url("bare")) as resp:
        assert "Content-MD5" not in resp.headers
        assert await resp.read() == b"abc"
    lying = fg.add_image(b"abc", os_hash_value="0" * 128, size=99)
    assert lying["os_hash_value"] == "0" * 128
    assert lying["size"] == 99


async def test_range(fg: FaultyGlance, session: aiohttp.ClientSession) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    fg.add_image(data, image_id="r")
    url = fg.file_url("r")
    cases = {
        "bytes=10-19": (10, 20),
        "bytes=10000-": (10000, 10240),
        "bytes=-5": (10235, 10240),
        "bytes=10000-99999": (10000, 10240),
        "bytes=-99999": (0, 10240),
    }
    for header, (start, stop) in cases.items():
        async with session.get(url, headers={"Range": header}) as resp:
            assert resp.status == 206, header
            assert resp.headers["Content-Range"] == f"bytes {start}-{stop - 1}/10240"
            assert resp.headers["Content-Length"] == str(stop - start)
            assert resp.headers["Content-MD5"] == hashlib.md5(data).hexdigest()
            assert await resp.read() == data[start:stop]
    for header, status in {
        "bytes=0-1,5-6": 400,
        "bytes=10240-": 416,
        "bytes=5-2": 416,
        "items=0-1": 416,
    }.items():
        async with session.get(url, headers={"Range": header}) as resp:
            assert resp.status == status, header
            assert "message" in (await resp.json())["error"]
    assert [r.range for r in fg.requests if r.path == "/v2/images/r/file"][:2] == [
        "bytes=10-19",
        "bytes=10000-",
    ]


async def test_cut_after(fg: FaultyGlance, session: aiohttp.ClientSession) -> None:
    data = os.urandom(2 * MiB)
    cut = 700_001
    fg.add_image(data, image_id="cut", fault=Fault(cut_after=cut))
    async with session.get(fg.file_url("cut")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(data))
        got, exc = await _read_until_error(resp)
    assert isinstance(exc, aiohttp.ClientPayloadError)
    assert got == data[:cut]

    # A cut range: the byte count is relative to the range start.
    async with session.get(fg.file_url("cut"), headers={"Range": "bytes=1000-"}) as resp:
        assert resp.status == 206
        got, exc = await _read_until_error(resp)
    assert exc is not None
    assert got == data[1000 : 1000 + cut]


async def test_cut_with_reset(fg: FaultyGlance, session: aiohttp.ClientSession) -> None:
    data = os.urandom(MiB)
    fg.add_image(data, image_id="rst", fault=Fault(cut_after=300_000, cut_reset=True))
    async with session.get(fg.file_url("rst")) as resp:
        got, exc = await _read_until_error(resp)
    assert exc is not None
    assert got == data[:300_000]


async def test_fault_times_then_resume(fg: FaultyGlance, session: aiohttp.ClientSession) -> None:
    data = os.urandom(MiB)
    fg.add_image(data, image_id="once", fault=Fault(cut_after=1000, times=1))
    async with session.get(fg.file_url("once")) as resp:
        got, exc = await _read_until_error(resp)
    assert exc is not None
    assert len(got) == 1000
    async with session.get(fg.file_url("once"), headers={"Range": "bytes=1000-"}) as resp:
        assert resp.status == 206
        rest = await resp.read()
    assert got + rest == data


async def test_trickle(fg: FaultyGlance, session: aiohttp.ClientSession) -> None:
    data = os.urandom(5000)
    fg.add_image(data, image_id="slow", fault=Fault(trickle_chunk=1000, trickle_delay=0.08))
    arrivals: list[tuple[float, int]] = []
    started = time.monotonic()
    async with session.get(fg.file_url("slow")) as resp:
        body = bytearray()
        async for chunk in resp.content.iter_any():
            arrivals.append((time.monotonic() - started, len(chunk)))
            body += chunk
    assert bytes(body) == data
    # Pieces arrive separately (a loaded client may coalesce a few, never split one).
    assert len(arrivals) >= 3, arrivals
    assert all(size % 1000 == 0 for _, size in arrivals), arrivals
    assert arrivals[-1][0] >= 4 * 0.08 - 0.01  # four sleeps between five pieces


async def test_stall(fg: FaultyGlance, session: aiohttp.ClientSession) -> None:
    data = os.urandom(100_000)
    fg.add_image(data, image_id="stall", fault=Fault(stall_after=1234))
    async with session.get(fg.file_url("stall")) as resp:
        assert resp.status == 200
        assert await resp.content.readexactly(1234) == data[:1234]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(resp.content.read(1), 0.3)
    # The stalled handler does not hold up shutdown (checked by the fixture's close()).


async def test_no_content_length(fg: FaultyGlance, session: aiohttp.ClientSession) -> None:
    data = os.urandom(MiB + 3)
    fg.add_image(data, image_id="ncl", fault=Fault(no_content_length=True))
    async with session.get(fg.file_url("ncl")) as resp:
        assert resp.status == 200
        assert "Content-Length" not in resp.headers
        assert "Transfer-Encoding" not in resp.headers
        assert resp.headers["Connection"].lower() == "close"
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert await resp.read() == data

    head, body = await asyncio.to_thread(_raw_get, fg.url, "/v2/images/ncl/file")
    lines = head.decode().lower().split("\r\n")
    assert lines[0].startswith("http/1.1 200")
    assert not any(h.startswith(("content-length:", "transfer-encoding:")) for h in lines)
    assert body == data  # raw bytes, no chunk framing

    # Combined with a cut, the client just sees an early clean EOF.
    fg.set_fault("ncl", Fault(no_content_length=True, cut_after=4096))
    async with session.get(fg.file_url("ncl")) as resp:
        got, exc = await _read_until_error(resp)
    assert exc is None
    assert got == data[:4096]


async def test_wrong_hash(fg: FaultyGlance, session: aiohttp.ClientSession) -> None:
    data = os.urandom(MiB)
    meta = fg.add_image(data, image_id="bad", fault=Fault(wrong_hash=True))
    async with session.get(fg.file_url("bad")) as resp:
        body = await resp.read()
    assert len(body) == len(data)
    assert [i for i in range(len(data)) if body[i] != data[i]] == [len(data) // 2]
    assert hashlib.sha512(body).hexdigest() != meta["os_hash_value"]
    assert resp.headers["Content-MD5"] == hashlib.md5(data).hexdigest()


async def test_status_injection(fg: FaultyGlance, session: aiohttp.ClientSession) -> None:
    fg.add_image(b"x" * 10, image_id="s", fault=Fault(status=503, metadata_status=403, times=2))
    async with session.get(fg.file_url("s")) as resp:
        assert resp.status == 503
        assert resp.headers["Content-Type"] == "application/json"
        assert (await resp.json())["error"]["code"] == 503
    async with session.get(f"{fg.url}/v2/images/s") as resp:
        assert resp.status == 403
        assert "message" in (await resp.json())["error"]
    # times=2 is used up: both answer normally now.
    async with session.get(f"{fg.url}/v2/images/s") as resp:
        assert resp.status == 200
    async with session.get(fg.file_url("s")) as resp:
        assert resp.status == 200
        assert await resp.read() == b"x" * 10

    fg.set_fault("s", Fault(status=401))
    async with session.get(fg.file_url("s")) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Keystone uri=")


async def test_image_states_and_delete(fg: FaultyGlance, session: aiohttp.ClientSession) -> None:
    queued = fg.add_image(b"", image_id="q", status="queued")
    assert queued["size"] is None and queued["os_hash_value"] is None
    async with session.get(fg.file_url("q")) as resp:
        assert resp.status == 204
        assert await resp.read() == b""
    async with session.get(fg.file_url("nope")) as resp:
        assert resp.status == 404
        assert "message" in (await resp.json())["error"]
    async with session.get(f"{fg.url}/v2/images/nope") as resp:
        assert resp.status == 404

    fg.add_image(b"data", image_id="d")
    fg.update_image("d", status="deactivated")
    async with session.get(fg.file_url("d")) as resp:
        assert resp.status == 403
    async with session.delete(f"{fg.url}/v2/images/d") as resp:
        assert resp.status == 204
    assert not fg.has_image("d")
    async with session.get(f"{fg.url}/v2/images/d") as resp:
        assert resp.status == 404


async def test_readers(fg: FaultyGlance, session: aiohttp.ClientSession) -> None:
    fg.add_image(b"secret", image_id="p", readers={"tok-a"})
    async with session.get(fg.file_url("p")) as resp:
        assert resp.status == 401
    async with session.get(fg.file_url("p"), headers={"X-Auth-Token": "tok-b"}) as resp:
        assert resp.status == 404
    async with session.get(fg.file_url("p"), headers={"X-Auth-Token": "tok-a"}) as resp:
        assert await resp.read() == b"secret"


async def test_versions(fg: FaultyGlance, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{fg.url}/") as resp:
        assert resp.status == 300
        doc = await resp.json()
    assert doc["versions"][0]["status"] == "CURRENT"
    assert doc["versions"][0]["links"][0]["href"] == f"{fg.url}/v2/"
    async with session.get(f"{fg.url}/versions") as resp:
        assert resp.status == 200


async def test_catch_all_echo(fg: FaultyGlance, session: aiohttp.ClientSession) -> None:
    headers = {"X-Auth-Token": "tok", "X-OpenStack-Request-ID": "req-1"}
    async with session.get(f"{fg.url}/v2/schemas/image?x=1", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["x-openstack-request-id"] == "req-1"
        echo = await resp.json()
    assert echo["path"] == "/v2/schemas/image"
    assert echo["method"] == "GET"
    assert echo["query"] == "x=1"
    assert echo["x-auth-token"] == "tok"
    assert echo["x-openstack-request-id"] == "req-1"

    upload = os.urandom(MiB + 5)
    async with session.put(f"{fg.url}/v2/images/u/file", data=upload) as resp:
        echo = await resp.json()
    assert echo["method"] == "PUT"
    assert echo["body_length"] == len(upload)
    assert echo["body_sha256"] == hashlib.sha256(upload).hexdigest()
    assert echo["chunked"] is False
    assert echo["content_length"] == len(upload)

    async def gen() -> AsyncIterator[bytes]:
        for i in range(4):
            yield bytes([i]) * 1000

    async with session.put(f"{fg.url}/v2/images/u/file", data=gen()) as resp:
        echo = await resp.json()
    assert echo["chunked"] is True
    assert echo["content_length"] is None
    assert echo["body_length"] == 4000

    patch = json.dumps([{"op": "replace", "path": "/name", "value": "n"}])
    async with session.patch(f"{fg.url}/v2/images/u", data=patch) as resp:
        assert (await resp.json())["body"] == patch


async def test_stub(fg: FaultyGlance, session: aiohttp.ClientSession) -> None:
    fg.stub("GET", "/v2/schemas/image", json_body={"name": "image"}, headers={"X-Test": "1"})
    fg.stub("GET", "/v2/images/too-long", status=431)
    async with session.get(f"{fg.url}/v2/schemas/image") as resp:
        assert resp.headers["X-Test"] == "1"
        assert await resp.json() == {"name": "image"}
    async with session.get(f"{fg.url}/v2/images/too-long") as resp:
        assert resp.status == 431


async def test_counting(fg: FaultyGlance, session: aiohttp.ClientSession) -> None:
    fg.add_image(b"abc", image_id="c")
    for _ in range(3):
        async with session.get(fg.file_url("c")) as resp:
            await resp.read()
    async with session.get(f"{fg.url}/v2/images/c") as resp:
        await resp.read()
    assert fg.count("GET", "/v2/images/c/file") == 3
    assert fg.count("get", "/v2/images/c") == 1
    assert fg.count("DELETE", "/v2/images/c") == 0
    method, path, headers, range_ = fg.requests[0]
    assert (method, path, range_) == ("GET", "/v2/images/c/file", None)
    assert "host" in headers
    fg.clear_requests()
    assert fg.requests == []


def test_thread_mode() -> None:
    fg = FaultyGlance()
    url = fg.start_in_thread()
    try:
        assert url == fg.url
        data = os.urandom(300_000)
        fg.add_image(data, image_id="t")
        with urllib.request.urlopen(fg.file_url("t"), timeout=5) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/octet-stream"
            assert resp.read() == data
        fg.set_fault("t", Fault(status=503))
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(fg.file_url("t"), timeout=5)
        assert err.value.code == 503
        err.value.close()
        assert fg.count("GET", "/v2/images/t/file") == 2
    finally:
        fg.stop_thread()
    with pytest.raises(RuntimeError):
        _ = fg.url
    fg.stop_thread()  # idempotent


def test_thread_mode_context_manager_stops_stalls() -> None:
    with FaultyGlance() as fg:
        fg.add_image(os.urandom(10_000), image_id="st", fault=Fault(stall_after=10))
        sock = socket.create_connection(("127.0.0.1", int(fg.url.rsplit(":", 1)[1])), timeout=5)
        sock.sendall(b"GET /v2/images/st/file HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
    # Leaving the block aborted the stalled response promptly, and the connection ended.
    assert time.monotonic() - started < 2
    sock.settimeout(5)
    try:
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(65536):
                pass
    finally:
        sock.close()
