"""Blocking HTTP for the launchers' readiness probes and helpers.

http.client rather than urllib: no proxy variables from the environment, no
exceptions for 3xx/4xx, and a large block size for streamed uploads.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any, NamedTuple

from lab.ports import LOOPBACK
from lab.units import MiB

__all__ = ["RawResponse", "Response", "raw_request", "request", "status_of"]


class Response(NamedTuple):
    status: int
    #: header names lower-cased
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | IO[bytes] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60,
    host: str = LOOPBACK,
) -> Response:
    """One request on a fresh connection; the whole body is read into memory."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout, blocksize=MiB)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def status_of(url: str, timeout: float = 2.0) -> int | None:
    """The status ``GET url`` answers with, or None while nothing answers."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    try:
        return request(parts.port or 80, "GET", path, timeout=timeout,
                       host=parts.hostname or LOOPBACK).status
    except OSError:
        return None


@dataclass(frozen=True)
class RawResponse:
    """One response read off a raw socket (header names lower-cased)."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


def raw_request(
    port: int,
    target: str | bytes,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    host: str = LOOPBACK,
    timeout: float = 10.0,
) -> RawResponse:
    """Send a request exactly as written (no normalisation of ``target``) and read the answer.

    ``target`` goes on the request line byte for byte, so ``..``, ``%2e%2e`` or ``%00``
    reach the server as a hostile client sends them; ``Connection: close`` is added.
    """
    raw_target = target.encode("latin-1") if isinstance(target, str) else target
    lines = [method.encode() + b" " + raw_target + b" HTTP/1.1", f"Host: {host}:{port}".encode()]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in (headers or {}).items()]
    lines.append(b"Connection: close")
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        response = http.client.HTTPResponse(sock, method=method)
        try:
            response.begin()
            body = response.read()
        finally:
            response.close()
    return RawResponse(
        status=response.status,
        reason=response.reason,
        headers={name.lower(): value for name, value in response.getheaders()},
        body=body,
    )
