"""An S3-compatible server for the s3 store tests: moto's standalone server, in a process.

``moto_server`` (from ``moto[server]``, in the ``test`` extra) speaks S3's REST
API over real HTTP on 127.0.0.1, so aiobotocore's whole stack (signing, the
ranged GetObject, error XML, the streamed body) runs as it would against RGW or
AWS. What it does not check: it accepts any credentials and does not verify
signatures, keeps objects in memory, and has no virtual-host addressing here
(the tests use path-style URLs, as Glance does for a non-AWS host).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

ACCESS_KEY = "edgecache"
#: AWS secrets may hold "/" and "+": Glance writes them into the URL as they are
SECRET_KEY = "se/cret+Key0"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class MotoS3:
    """A running moto server and a boto3 client for arranging objects in it."""

    endpoint: str
    process: subprocess.Popen[bytes]
    client: Any

    @property
    def host(self) -> str:
        return self.endpoint.split("://", 1)[1]

    def put(self, bucket: str, key: str, data: bytes) -> str:
        """Store ``data``; the location URL Glance's s3 driver would write for it."""
        self.client.put_object(Bucket=bucket, Key=key, Body=data)
        return self.url(bucket, key)

    def url(self, bucket: str, key: str) -> str:
        return f"s3://{ACCESS_KEY}:{SECRET_KEY}@{self.host}/{bucket}/{key}"


@contextmanager
def moto_s3(bucket: str = "images") -> Iterator[MotoS3]:
    """A moto server on a free 127.0.0.1 port with ``bucket`` made; stopped by pid at exit."""
    import boto3

    port = _free_port()
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {process.returncode}")
            try:
                with urllib.request.urlopen(endpoint + "/moto-api/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not answer within 20 s") from None
                time.sleep(0.1)
        client = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        )
        client.create_bucket(Bucket=bucket)
        yield MotoS3(endpoint, process, client)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
