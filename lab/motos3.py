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
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.httpclient import status_of
from lab.ports import LOOPBACK, free_port
from lab.procs import Process

__all__ = ["ACCESS_KEY", "SECRET_KEY", "MotoS3", "moto_s3"]

ACCESS_KEY = "edgecache"
#: AWS secrets may hold "/" and "+": Glance writes them into the URL as they are
SECRET_KEY = "se/cret+Key0"


@dataclass
class MotoS3:
    """A running moto server and a boto3 client for arranging objects in it."""

    endpoint: str
    process: Process
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
def moto_s3(log: Path, bucket: str = "images") -> Iterator[MotoS3]:
    """A moto server on a free 127.0.0.1 port with ``bucket`` made; stopped by pid at exit."""
    import boto3

    port = free_port()
    endpoint = f"http://{LOOPBACK}:{port}"
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    server = Process(
        [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)],
        log=log, name=f"moto_server at {endpoint}", env=env, start_timeout=20,
        ready=lambda: status_of(endpoint + "/moto-api/", timeout=1) is not None,
    )
    with server:
        client = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        )
        client.create_bucket(Bucket=bucket)
        yield MotoS3(endpoint, server, client)
