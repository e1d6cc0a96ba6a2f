"""Hostile and malformed requests against the running daemon (docs/glance-wire.md).

Requests go out on raw sockets wherever a client library would normalise them
(``requests``/urllib3 remove dot segments and decode ``%2e``), and also through
``requests`` when it sends the target unchanged. Every answer must carry the
status Glance's contract gives, a Content-Type and an error body glanceclient can
turn into an exception with a message, never a 500; and nothing malformed is
ever forwarded to the upstream Glance.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from glanceclient import exc as glance_exc
from requests.structures import CaseInsensitiveDict

import edgecache
from lab.edgecache import EdgecacheProcess
from lab.httpclient import RawResponse, raw_request
from lab.polling import wait_until
from tests.support.faultyglance import FaultyGlance, RecordedRequest, is_download_probe

IMAGE_SIZE = 300_000
#: aiohttp's limit on one request line or header field in edgecache (app.make_app).
FIELD_LIMIT = 16384


@dataclass(frozen=True)
class Env:
    glance: FaultyGlance
    daemon: EdgecacheProcess
    image_id: str
    image_size: int


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with FaultyGlance() as glance:
        image_id = glance.add_image(os.urandom(IMAGE_SIZE))["id"]
        workdir = tmp_path_factory.mktemp("hostile")
        with EdgecacheProcess(workdir, glance_endpoints=[glance.url]) as daemon:
            yield Env(glance, daemon, image_id, IMAGE_SIZE)


IMAGE = "{image}"  # replaced by the module image's id in targets


@dataclass(frozen=True)
class Case:
    name: str
    target: str
    status: frozenset[int]
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "GET"
    #: "none": upstream must see no request at all; "metadata": at most the caller's
    #: GET /v2/images/{id} of a well-formed id and its one-byte download check of /file.
    upstream: str = "none"
    #: whether requests sends this target verbatim (then it is also sent with requests)
    via_requests: bool = True
    #: the answer comes from edgecache's handlers (JSON error + request id), not aiohttp's parser
    app_level: bool = True


def _s(*codes: int) -> frozenset[int]:
    return frozenset(codes)


UNKNOWN = str(uuid.UUID(int=0x1234))

CASES = [
    # -- malformed image ids: 404 (Glance: no image with that id), never forwarded
    Case("id-not-a-uuid", "/v2/images/not-a-uuid/file", _s(404)),
    Case("id-very-long", f"/v2/images/{'a' * 5000}/file", _s(404)),
    Case("id-pct00", "/v2/images/%00/file", _s(404)),
    Case("id-uuid-pct00", f"/v2/images/{IMAGE}%00/file", _s(404)),
    Case("id-uuid-suffix", f"/v2/images/{IMAGE}x/file", _s(404)),
    Case("id-spaces-encoded", "/v2/images/%20%20/file", _s(404)),
    Case(
        "id-longer-than-request-line",
        f"/v2/images/{'a' * (FIELD_LIMIT + 100)}/file",
        _s(400, 414),
        via_requests=False,
        app_level=False,
    ),
    Case("id-raw-nul", "/v2/images/\x00/file", _s(400), via_requests=False, app_level=False),
    # -- dot segments, plain and encoded: refused before anything is forwarded
    Case("dotdot-etc-passwd", "/v2/images/../../etc/passwd", _s(400, 404), via_requests=False),
    Case("dotdot-encoded", "/v2/%2e%2e/x", _s(400, 404), via_requests=False),
    Case("dotdot-encoded-upper", "/v2/images/%2E%2E/file", _s(400, 404), via_requests=False),
    Case(
        "dotdot-encoded-slashes",
        "/v2/images/..%2f..%2fetc%2fpasswd/file",
        _s(400, 404),
        via_requests=False,
    ),
    Case(
        "dotdot-after-id",
        f"/v2/images/{IMAGE}/../../../etc/passwd",
        _s(400, 404),
        via_requests=False,
    ),
    Case("dotdot-climb-prefix", f"/image/../v2/images/{IMAGE}/file", _s(400, 404),
         via_requests=False),
    Case("dotdot-root", "/../../etc/passwd", _s(400, 404), via_requests=False),
    Case(
        "dotdot-absolute-form",
        "http://glance.example/v2/images/../../etc/passwd",
        _s(400, 404),
        via_requests=False,
    ),
    Case(
        "dotdot-passthrough-delete",
        "/v2/images/%2e%2e/%2e%2e/%2e%2e/admin",
        _s(400, 404),
        method="DELETE",
        via_requests=False,
    ),
    Case(
        "dotdot-passthrough-put",
        "/v2/../../v1/images",
        _s(400, 404),
        method="PUT",
        via_requests=False,
    ),
    # -- ranges (glance/common/wsgi.py): comma 400, unparsable or past the end 416
    Case("range-multi", f"/v2/images/{IMAGE}/file", _s(400),
         headers={"Range": "bytes=0-1,3-4"}, upstream="metadata"),
    Case("range-past-end", f"/v2/images/{IMAGE}/file", _s(416),
         headers={"Range": f"bytes={IMAGE_SIZE}-"}, upstream="metadata"),
    Case("range-far-past-end", f"/v2/images/{IMAGE}/file", _s(416),
         headers={"Range": f"bytes={10 * IMAGE_SIZE}-{20 * IMAGE_SIZE}"}, upstream="metadata"),
    Case("range-garbage", f"/v2/images/{IMAGE}/file", _s(416),
         headers={"Range": "garbage"}, upstream="metadata"),
    Case("range-not-numbers", f"/v2/images/{IMAGE}/file", _s(416),
         headers={"Range": "bytes=abc-def"}, upstream="metadata"),
    Case("range-huge-number", f"/v2/images/{IMAGE}/file", _s(416),
         headers={"Range": "bytes=" + "9" * 400 + "-"}, upstream="metadata"),
    Case("range-empty", f"/v2/images/{IMAGE}/file", _s(416),
         headers={"Range": "bytes=-"}, upstream="metadata"),
    Case("legacy-content-range-garbage", f"/v2/images/{IMAGE}/file", _s(416),
         headers={"Content-Range": "garbage"}, upstream="metadata"),
    Case("legacy-content-range-past-end", f"/v2/images/{IMAGE}/file", _s(416),
         headers={"Content-Range": f"bytes {IMAGE_SIZE}-{IMAGE_SIZE + 9}/*"},
         upstream="metadata"),
    # -- an id Glance does not know: Glance's 404, relayed
    Case("unknown-image", f"/v2/images/{UNKNOWN}/file", _s(404), upstream="metadata"),
    Case("unknown-image-head", f"/v2/images/{UNKNOWN}/file", _s(404), method="HEAD",
         upstream="metadata"),
    # -- request ids and headers
    Case("request-id-65-chars", f"/v2/images/{IMAGE}/file", _s(431),
         headers={"X-OpenStack-Request-ID": "r" * 65}),
    Case("request-id-1000-chars", f"/v2/images/{IMAGE}/file", _s(431),
         headers={"X-OpenStack-Request-ID": "req-" + "x" * 996}),
    Case("header-oversized", f"/v2/images/{IMAGE}/file", _s(400, 413, 431),
         headers={"X-Padding": "p" * (FIELD_LIMIT + 100)}, via_requests=False, app_level=False),
    Case("header-name-oversized", f"/v2/images/{IMAGE}/file", _s(400, 413, 431),
         headers={"X-" + "n" * (FIELD_LIMIT + 100): "v"}, via_requests=False, app_level=False),
]


def _as_requests_response(raw: RawResponse) -> requests.Response:
    """The raw answer as glanceclient would hold it (a requests.Response)."""
    response = requests.Response()
    response.status_code = raw.status
    response.reason = raw.reason
    response.headers = CaseInsensitiveDict(raw.headers)
    response._content = raw.body
    response.encoding = requests.utils.get_encoding_from_headers(response.headers)
    return response


def _check_error_answer(case: Case, response: requests.Response, method: str) -> None:
    status = response.status_code
    assert status != 500
    assert status in case.status, (status, response.content[:300])
    content_type = response.headers.get("Content-Type")
    assert content_type, "an error answer without a Content-Type"
    if case.app_level:
        assert response.headers.get("x-openstack-request-id", "").startswith("req-")
    if method == "HEAD":
        return
    assert response.content, "an error answer without a body"
    # What glanceclient does with any answer >= 400 (glanceclient/common/http.py).
    error = glance_exc.from_response(response, response.content)
    assert isinstance(error, glance_exc.HTTPException)
    assert error.details and error.details != type(error).__name__
    assert str(error).strip()
    if "json" in content_type:
        document = json.loads(response.content)
        assert all(isinstance(v, dict) and v.get("message") for v in document.values())
        assert error.details == "\n".join(v["message"] for v in document.values())


def _new_requests(glance: FaultyGlance, before: int) -> list[RecordedRequest]:
    return list(glance.requests[before:])


def _check_upstream(case: Case, seen: list[RecordedRequest], image_id: str) -> None:
    if case.upstream == "none":
        assert seen == [], f"forwarded upstream: {[(r.method, r.path) for r in seen]}"
        return
    for recorded in seen:  # the record, and the download check before a 400 or 416
        assert recorded.method == "GET"
        assert recorded.path == f"/v2/images/{image_id}" or (
            recorded.path == f"/v2/images/{image_id}/file" and is_download_probe(recorded.range)
        ), (recorded.path, recorded.range)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request_is_refused_cleanly(env: Env, case: Case) -> None:
    target = case.target.replace(IMAGE, env.image_id)
    image_in_target = env.image_id if env.image_id in target else UNKNOWN
    before = len(env.glance.requests)

    raw = raw_request(env.daemon.port, target, method=case.method, headers=case.headers)
    _check_error_answer(case, _as_requests_response(raw), case.method)
    _check_upstream(case, _new_requests(env.glance, before), image_in_target)

    if case.via_requests:
        before = len(env.glance.requests)
        response = requests.request(
            case.method, env.daemon.url + target, headers=case.headers, timeout=10
        )
        assert response.request.path_url == target, "requests changed the target"
        _check_error_answer(case, response, case.method)
        _check_upstream(case, _new_requests(env.glance, before), image_in_target)

    assert env.daemon.running, env.daemon.log_text()[-3000:]


def test_416_names_the_image_size(env: Env) -> None:
    raw = raw_request(
        env.daemon.port,
        f"/v2/images/{env.image_id}/file",
        headers={"Range": f"bytes={env.image_size}-"},
    )
    assert raw.status == 416
    assert raw.headers["content-range"] == f"bytes */{env.image_size}"


def test_nothing_hostile_ever_reached_upstream(env: Env) -> None:
    for recorded in env.glance.requests:
        assert ".." not in recorded.path
        assert "passwd" not in recorded.path
        assert "\x00" not in recorded.path
        assert "not-a-uuid" not in recorded.path
        assert "/admin" not in recorded.path
        assert not recorded.path.startswith("/v1")
        assert recorded.method == "GET"
        assert recorded.path in (f"/v2/images/{env.image_id}", f"/v2/images/{UNKNOWN}") or (
            recorded.path == f"/v2/images/{env.image_id}/file" and is_download_probe(recorded.range)
        ), (recorded.path, recorded.range)


def test_daemon_keeps_serving_after_hostile_input(env: Env) -> None:
    meta = env.glance.metadata(env.image_id)
    for _ in range(2):  # a miss, then a hit
        response = requests.get(
            f"{env.daemon.url}/v2/images/{env.image_id}/file", timeout=30
        )
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert len(response.content) == meta["size"]
        assert hashlib.sha512(response.content).hexdigest() == meta["os_hash_value"]
    assert env.glance.count("GET", f"/v2/images/{env.image_id}/file") == 1
    assert env.daemon.running
    access_lines = [
        line for line in env.daemon.log_text().splitlines() if " edgecache.access " in line
    ]
    assert access_lines
    assert not [line for line in access_lines if " status=500 " in line], "a 500 was answered"
    # Parser-level refusals are logged by aiohttp; nothing may fail inside edgecache's code.
    package = str(Path(edgecache.__file__).parent) + os.sep
    failures = [line for line in env.daemon.log_text().splitlines()
                if line.strip().startswith("File ") and package in line]
    assert failures == [], "\n".join(failures)


# -- fuzzing: 5,000 malformed requests cost a bounded, traceback-free log ----------------

FUZZ_REQUESTS = 5000
FUZZ_SEED = 20261202
#: What 5,000 malformed requests may add to the log, whatever they are.
LOG_BUDGET = 64 * 1024
_BAD_IDS = ("not-a-uuid", "%zz", "%f", "%", "%ff%fe", "%00", "%c0%af", "a" * 300, "%2e%2e")


@dataclass(frozen=True)
class Fuzzed:
    kind: str
    data: bytes
    #: edgecache's handlers answer it (a 4xx on the wire), not aiohttp's parser,
    #: which may reset a connection whose client is still sending
    app_level: bool


def _head(method: bytes, target: bytes, headers: list[bytes], body: bytes = b"") -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", *headers,
             b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _fuzzed(rng: random.Random, image_id: str) -> Fuzzed:
    """One malformed request; any that parses targets a path edgecache refuses itself."""
    bad_id = rng.choice(_BAD_IDS).encode()
    refused = b"/v2/images/" + bad_id + b"/file"
    dotted = rng.choice([b"/v2/images/../../etc/passwd", b"/v2/%2e%2e/x", b"/v2/images/%2E%2E/file",
                         b"/image/../v2/images/x/file", b"/v2/images/..%2f..%2fadmin"])
    junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
    kind = rng.choice([
        "request-line", "method", "version", "header-syntax", "header-control",
        "header-utf8", "path-utf8", "overlong-header", "overlong-line", "many-headers",
        "chunked", "content-length", "weird-path", "bad-id", "request-id", "range",
        "control-inserted",
    ])
    if kind == "request-line":
        # (never an empty line: a server waits for the request after one, RFC 9112 §2.2)
        line = b"\x01" + junk.replace(b"\r", b"").replace(b"\n", b"")
        return Fuzzed(kind, line + b"\r\n\r\n", False)
    if kind == "method":
        method = rng.choice([b"G@T", b"GE T", b"{}", b"GET\x01", b"\xffGET", b"(", b"GET/"])
        return Fuzzed(kind, _head(method, refused, []), False)
    if kind == "version":
        version = rng.choice([b"HTTP/9.9", b"HTTP/1", b"HTTX/1.1", b"HTTP/1.1.1", b""])
        return Fuzzed(kind, b"GET " + refused + b" " + version + b"\r\nHost: x\r\n\r\n", False)
    if kind == "header-syntax":
        header = rng.choice([b"NoColon", b"Bad Name: v", b"X(y): 1", b" Leading: space",
                             b"X-A : trailing-space", b": empty-name"])
        return Fuzzed(kind, _head(b"GET", refused, [header]), False)
    if kind == "header-control":
        value = b"v" + bytes([rng.choice([0, 1, 8, 11, 12, 27, 127])]) + b"v"
        return Fuzzed(kind, _head(b"GET", refused, [b"X-Ctl: " + value]), False)
    if kind == "header-utf8":
        value = rng.choice([b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"caf\xe9"])
        return Fuzzed(kind, _head(b"GET", refused, [b"X-Utf: " + value]), True)
    if kind == "path-utf8":
        target = b"/v2/images/" + rng.choice([b"\xff\xfe", b"\xc3", b"\xe2\x82"]) + b"/file"
        return Fuzzed(kind, _head(b"GET", target, []), False)
    if kind == "overlong-header":
        size = FIELD_LIMIT + rng.randrange(1, 4000)
        return Fuzzed(kind, _head(b"GET", refused, [b"X-Pad: " + b"p" * size]), False)
    if kind == "overlong-line":
        target = b"/v2/images/" + b"a" * (FIELD_LIMIT + rng.randrange(1, 4000)) + b"/file"
        return Fuzzed(kind, _head(b"GET", target, []), False)
    if kind == "many-headers":
        headers = [b"X-%d: y" % i for i in range(rng.randrange(200, 400))]
        return Fuzzed(kind, _head(b"GET", refused, headers), False)
    if kind == "chunked":
        body = rng.choice([b"zz\r\nabc\r\n0\r\n\r\n", b"-1\r\n\r\n", b"5\r\nab\r\nxx\r\n",
                           b"ffffffffffffffffff\r\n\r\n", b"3;\x01\r\nabc\r\n0\r\n\r\n"])
        return Fuzzed(kind, _head(b"PUT", dotted, [b"Transfer-Encoding: chunked"], body), False)
    if kind == "content-length":
        framing = rng.choice([
            [b"Content-Length: abc"], [b"Content-Length: -1"], [b"Content-Length: 1e3"],
            [b"Content-Length: " + b"9" * 30], [b"Content-Length: 1", b"Content-Length: 2"],
            [b"Content-Length: 3", b"Transfer-Encoding: chunked"], [b"Content-Length: 0x10"],
        ])
        return Fuzzed(kind, _head(b"PUT", dotted, framing, b"abc"), False)
    if kind == "weird-path":
        target = rng.choice([b"*", b"http://[::1/v2/images", b"/v2/images/%00/file",
                             b"//v2/images/../x", b"/v2/images/\t/file", b"/v2/images/#/file",
                             b"/v2/images/x#frag", b"/v2/images?q=#"])
        if rng.random() < 0.5:  # a method that would pass through, on a refused path
            return Fuzzed(kind, _head(rng.choice([b"DELETE", b"PATCH", b"POST"]), dotted, []),
                          False)
        return Fuzzed(kind, _head(b"GET", target, []), False)
    if kind == "bad-id":
        return Fuzzed(kind, _head(rng.choice([b"GET", b"HEAD"]), refused, []), True)
    if kind == "request-id":
        rid = rng.choice([b"r" * rng.randrange(65, 4000), b"req-\xff\xfe", b"req-" + b"x" * 100])
        return Fuzzed(kind, _head(b"GET", refused, [b"X-OpenStack-Request-ID: " + rid]), True)
    if kind == "range":
        value = rng.choice([b"garbage", b"bytes=abc-def", b"bytes=" + b"9" * 400 + b"-",
                            b"bytes=-", b"bytes=0-1,3-4", b"bytes=\xff-"])
        target = b"/v2/images/" + image_id.encode() + b"/file"
        return Fuzzed(kind, _head(b"GET", target, [b"Range: " + value]), True)
    # a control character somewhere in an otherwise fine request head
    data = bytearray(_head(b"GET", refused, [b"X-A: b"]))
    data.insert(rng.randrange(0, len(data) - 4), rng.choice([0, 1, 2, 0x7F]))
    return Fuzzed(kind, bytes(data), False)


def _send_raw(port: int, data: bytes) -> int | None:
    """The status answered to ``data``, None when the connection closed without one,
    -1 when nothing came within the timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        answer = b""
        try:
            sock.sendall(data)
            while b"\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
        except TimeoutError:
            return -1  # neither an answer nor a close: a request left hanging
    if not answer.startswith(b"HTTP/1."):
        return None
    return int(answer.split(b" ", 2)[1])


def test_fuzzed_requests_cost_a_bounded_log_without_tracebacks(env: Env) -> None:
    rng = random.Random(FUZZ_SEED)
    cases = [_fuzzed(rng, env.image_id) for _ in range(FUZZ_REQUESTS)]
    before = env.daemon.log_file.stat().st_size

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda case: _send_raw(env.daemon.port, case.data), cases))
    # ... and the daemon still serves (its access line comes after every fuzzed one's)
    answer = requests.get(f"{env.daemon.url}/v2/images/{env.image_id}/file", timeout=30)
    assert answer.status_code == 200
    assert len(answer.content) == env.image_size
    wait_until(lambda: b" status=200 " in env.daemon.log_file.read_bytes()[before:],
               "the access line of the download", timeout=10)

    added = env.daemon.log_file.read_bytes()[before:].decode(errors="replace")
    assert "Traceback" not in added, added[:3000]
    assert len(added.encode()) < LOG_BUDGET, (len(added.encode()), added[-3000:])
    wrong = collections.Counter(
        (case.kind, status) for case, status in zip(cases, statuses, strict=True)
        if not (status is not None and 400 <= status < 500)
        and (case.app_level or status is not None)
    )
    assert not wrong, wrong
    assert env.daemon.running
