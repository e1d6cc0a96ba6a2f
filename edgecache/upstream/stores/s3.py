"""Direct reads from a Glance S3 store (``s3://``, ``s3+http://``, ``s3+https://``).

Needs aiobotocore (the ``s3`` extra); :func:`available` says whether it is
installed, and :func:`~edgecache.upstream.stores.default_stores` registers
:class:`S3Store` only then.

Glance's s3 driver writes locations as
``SCHEME://ACCESS:SECRET@SERVICE/BUCKET/KEY``: ``s3://`` and ``s3+http://``
reach the service over plain HTTP, ``s3+https://`` over HTTPS. SERVICE is a
host, with a port and a path prefix if the service has them; the credentials
are written as they are (not percent-encoded), and an AWS secret may contain
``/``. A URL without credentials is read with botocore's own credential chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, instance roles).
The secret never reaches a log line or an exception message: those name the
object as ``SCHEME://SERVICE/BUCKET/KEY``.

Where requests go (docs/behaviour.md#direct-store-reads): an object is read
only when its path-style URL ``http(s)://SERVICE/BUCKET/KEY`` is under
``[upstream] direct_store_allow``, and every request botocore sends for it is
checked again just before it leaves (``before-send``): whatever botocore itself
decides to do (retry elsewhere after a region redirect, say), no signed request
leaves for a place outside the allowlist.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import urllib.parse
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from edgecache.errors import NotFound, UpstreamError
from edgecache.model import ImageBody
from edgecache.upstream.stores.allow import StoreAllowlist

if TYPE_CHECKING:
    from botocore.exceptions import BotoCoreError
else:
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:  # without the s3 extra nothing here is ever called
        BotoCoreError = OSError

#: bytes per read of an S3 object body
S3_PIECE = 1 << 20

SCHEMES: tuple[str, ...] = ("s3", "s3+http", "s3+https")

#: error codes meaning "no such object" (a missing bucket is as missing as a missing key)
_MISSING = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})

#: ``s3.<region>.amazonaws.com``, ``s3-<region>.amazonaws.com``, ``<bucket>.s3.<region>...``
_AWS_REGION = re.compile(r"(?:^|\.)s3[.-](?!external-1)([a-z0-9-]+)\.amazonaws\.com$")


def available() -> bool:
    """Whether aiobotocore (the ``s3`` extra) is installed."""
    return importlib.util.find_spec("aiobotocore") is not None


@dataclass(frozen=True)
class S3Location:
    """One object named by a Glance s3 location URL."""

    scheme: str
    endpoint: str
    bucket: str
    key: str
    access_key: str | None
    secret_key: str | None

    @property
    def host(self) -> str:
        return self.endpoint.split("://", 1)[1].split("/", 1)[0]

    @property
    def region(self) -> str:
        """The signing region: from an AWS host name, else ``us-east-1`` (what RGW accepts)."""
        match = _AWS_REGION.search(self.host.split(":", 1)[0].lower())
        return match.group(1) if match else "us-east-1"

    @property
    def object_url(self) -> str:
        """The path-style URL botocore requests the object at."""
        quote = urllib.parse.quote
        return f"{self.endpoint}/{quote(self.bucket)}/{quote(self.key)}"

    def redacted(self) -> str:
        """The URL without its credentials, for messages."""
        service = self.endpoint.split("://", 1)[1]
        return f"{self.scheme}://{service}/{self.bucket}/{self.key}"

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """Split a location URL the way Glance's s3 driver builds it.

        Raises UpstreamError (reason ``store``) for a URL that is not one; the
        message leaves the credentials out.
        """
        scheme, sep, rest = url.partition("://")
        scheme = scheme.lower()
        if not sep or scheme not in SCHEMES or "://" in rest:
            raise UpstreamError(f"{scheme}:// URL is not an S3 location", reason="store")
        access_key = secret_key = None
        if "@" in rest:
            # the key is Glance's image id; the secret may hold "/" (AWS) or even "@"
            creds, _, rest = rest.rpartition("@")
            access_key, colon, secret_key = creds.partition(":")
            if not access_key or not colon:
                raise UpstreamError(f"{scheme}:// URL with malformed credentials",
                                    reason="store")
        parts = rest.strip("/").split("/")
        if len(parts) < 3 or not all(parts[-2:]):
            raise UpstreamError(f"{scheme}:// URL without a service, bucket and key",
                                reason="store")
        *service, bucket, key = parts
        transport = "https" if scheme == "s3+https" else "http"
        return cls(scheme, f"{transport}://{'/'.join(service)}", bucket, key,
                   access_key, secret_key)


class S3Body:
    """A GetObject body streamed in :data:`S3_PIECE` pieces; closing it closes its client."""

    def __init__(self, context: Any, stream: Any, start: int, length: int | None,
                 name: str) -> None:
        #: the client's ``async with`` context: leaving it closes the client
        self._client: Any = context
        self._stream: Any = stream
        self.start = start
        self.content_length = length
        self._name = name

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while self._stream is not None:
                try:
                    piece: bytes = await self._stream.read(S3_PIECE)
                except (TimeoutError, OSError, aiohttp.ClientError, BotoCoreError) as exc:
                    # "body": the fill resumes from what it has (docs/behaviour.md#upstream-faults)
                    raise UpstreamError(f"{self._name}: body read failed: {exc!r}",
                                        reason="body") from exc
                if not piece:
                    return
                yield piece
        finally:
            await self._aclose()

    async def _aclose(self) -> None:
        stream, self._stream = self._stream, None
        client, self._client = self._client, None
        if stream is not None:
            stream.close()
        if client is not None:
            await client.__aexit__(None, None, None)

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        client, self._client = self._client, None
        if client is not None:
            _spawn(client.__aexit__(None, None, None))


_closing: set[asyncio.Task[Any]] = set()


def _spawn(closing: Coroutine[Any, Any, Any]) -> None:
    """Close a client in the background (``close`` is synchronous), keeping the task alive."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop left to close it on
        closing.close()
        return
    task = loop.create_task(closing)
    _closing.add(task)
    task.add_done_callback(_closing.discard)


class S3Store:
    """Glance's ``s3`` store, read with ranged GetObject calls through aiobotocore.

    Each :meth:`open` makes a client of its own (the URL carries its own
    endpoint and credentials) that lives as long as the body it returns. Only
    objects under ``allow`` are read; without credentials in the URL botocore's
    own chain signs the request, so this is also where edgecache's AWS keys
    may go.
    """

    schemes: tuple[str, ...] = SCHEMES

    def __init__(
        self,
        *,
        allow: StoreAllowlist,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
    ) -> None:
        self._allow = allow
        from aiobotocore.session import get_session
        from botocore.config import Config

        self._session = get_session()
        self._config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "max_attempts": 2},
            s3={"addressing_style": "path"},
            signature_version="s3v4",
        )

    async def open(self, url: str, offset: int = 0) -> ImageBody:
        from botocore.exceptions import ClientError

        where = S3Location.parse(url)
        name = where.redacted()
        self._allow.check(where.object_url, name)
        context = self._session.create_client(
            "s3",
            endpoint_url=where.endpoint,
            region_name=where.region,
            aws_access_key_id=where.access_key,
            aws_secret_access_key=where.secret_key,
            config=self._config,
        )
        try:
            client = await context.__aenter__()
        except (BotoCoreError, ValueError) as exc:
            raise UpstreamError(f"{name}: {type(exc).__name__}", reason="store") from exc

        def guard(request: Any, **_: Any) -> None:
            self._allow.check(str(request.url), name)  # StoreRefused: nothing is sent

        client.meta.events.register("before-send.s3", guard)
        request: dict[str, Any] = {"Bucket": where.bucket, "Key": where.key}
        if offset:
            request["Range"] = f"bytes={offset}-"
        try:
            response = await client.get_object(**request)
        except ClientError as exc:
            await context.__aexit__(None, None, None)
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _MISSING:
                raise NotFound(f"{name}: {code}") from exc
            if code == "InvalidRange":
                raise UpstreamError(f"{name}: offset {offset} beyond the object",
                                    reason="store") from exc
            raise UpstreamError(f"{name}: {code or status}", reason="store") from exc
        except (BotoCoreError, TimeoutError, OSError) as exc:
            await context.__aexit__(None, None, None)
            raise UpstreamError(f"{name}: {type(exc).__name__}: {exc}", reason="store") from exc
        except BaseException:
            await context.__aexit__(None, None, None)
            raise
        stream = response["Body"]
        length = response.get("ContentLength")
        if offset:
            start = _range_start(str(response.get("ContentRange", "")))
            if start != offset:
                stream.close()
                await context.__aexit__(None, None, None)
                raise UpstreamError(f"{name}: a ranged read that does not start at {offset}",
                                    reason="store")
        return S3Body(context, stream, offset, int(length) if length is not None else None,
                      name)


def _range_start(content_range: str) -> int | None:
    """The first byte of ``bytes FIRST-LAST/SIZE``."""
    match = re.match(r"\s*bytes\s+(\d+)-\d+/(?:\d+|\*)\s*$", content_range)
    return int(match.group(1)) if match else None
