"""Direct reads from a Glance Swift store: ``swift://``, ``swift+http://``, ``swift+https://``.

glance_store writes two shapes of location:

* single tenant: ``swift+https://USER:KEY@AUTH_ADDRESS/CONTAINER/OBJECT``, the
  credentials (``USER`` may itself be ``tenant:user``) and the auth endpoint of
  Glance's Swift account in the URL;
* multi tenant (``swift_store_multi_tenant``): ``swift+https://STORAGE_URL/CONTAINER/OBJECT``,
  the account's storage URL and no credentials.

``swift://`` and ``swift+https://`` mean https, ``swift+http://`` http.
``swift+config://`` (credentials in Glance's own swift config file) is not readable here.

Authentication: a location with credentials whose auth address is not a Keystone
one (its last path element is not ``v2.0`` / ``v3``) uses Swift's v1 handshake
(``X-Auth-User`` / ``X-Auth-Key`` → ``X-Storage-Url`` / ``X-Auth-Token``, tempauth
and swauth style); every other location uses the ``[upstream_auth]``
keystoneauth1 session: its token, and for a location without a storage URL the
``object-store`` endpoint of its catalog. A 401 drops the cached token and
retries once. Credentials never appear in messages or logs: locations are named
without their user information.

Where requests go (docs/behaviour.md#direct-store-reads): the ``[upstream_auth]``
token is only ever sent to a storage URL whose scheme, host and port are those
of an ``object-store`` endpoint in that session's own catalog; every URL
contacted (the v1 auth address, the object) must be under ``[upstream]
direct_store_allow``; redirects are never followed (they would carry the
token to a place nobody checked).
"""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import aiohttp
import yarl
from keystoneauth1.session import Session as KeystoneSession

from edgecache.errors import UpstreamError
from edgecache.model import ImageBody
from edgecache.upstream.body import store_body
from edgecache.upstream.service_auth import KEYSTONE_THREADS
from edgecache.upstream.stores.allow import Origin, StoreAllowlist, StoreRefused, refuse_redirect

#: catalog interfaces whose object-store endpoints count as the session's own Swift
_INTERFACES = ("public", "internal", "admin")

__all__ = ["KeystoneSession", "SwiftLocation", "SwiftStore", "parse_location"]

LOG = logging.getLogger(__name__)

_KEYSTONE_AUTH_PATH = re.compile(r"(^|/)v(2\.0|3)/?$")


@dataclass(frozen=True)
class SwiftLocation:
    """A parsed glance_store Swift location."""

    #: the location without its credentials, for messages
    display: str
    #: ``http(s)://host[:port]/path`` before the container: an auth address
    #: (with credentials) or a storage URL (without)
    base: str
    container: str
    obj: str
    user: str | None = None
    key: str | None = None

    @property
    def v1_auth(self) -> bool:
        """Credentials for a non-Keystone (tempauth-style) auth address."""
        return self.user is not None and not _KEYSTONE_AUTH_PATH.search(
            urllib.parse.urlsplit(self.base).path
        )

    def object_url(self, storage_url: str) -> str:
        quote = urllib.parse.quote
        return f"{storage_url.rstrip('/')}/{quote(self.container)}/{quote(self.obj)}"


def parse_location(url: str) -> SwiftLocation:
    """Split a Swift location; UpstreamError (``store``) when it is malformed."""
    scheme, rest = url.split("://", 1) if "://" in url else (url, "")
    scheme = scheme.lower()
    if scheme not in SwiftStore.schemes:
        raise UpstreamError(f"{scheme}:// is not a Swift location", reason="store")
    http = "http" if scheme == "swift+http" else "https"
    netloc, _, path = rest.partition("/")
    user = key = None
    if "@" in netloc:
        creds, netloc = netloc.rsplit("@", 1)
        if ":" not in creds:
            raise UpstreamError(f"{scheme}://{netloc}/...: credentials without a key",
                                reason="store")
        raw_user, raw_key = creds.rsplit(":", 1)
        user, key = urllib.parse.unquote(raw_user), urllib.parse.unquote(raw_key)
    display = f"{scheme}://{netloc}/{path}"
    parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
    if not netloc or len(parts) < 2 or not all(parts[-2:]):
        raise UpstreamError(f"{display}: no container and object in the location",
                            reason="store")
    base = f"{http}://{netloc}/{'/'.join(parts[:-2])}".rstrip("/")
    return SwiftLocation(display, base, parts[-2], parts[-1], user, key)


class SwiftStore:
    """Swift objects, read with the upstream's shared aiohttp session."""

    schemes: tuple[str, ...] = ("swift", "swift+http", "swift+https")

    def __init__(
        self,
        session: aiohttp.ClientSession,
        keystone: KeystoneSession | None = None,
        *,
        allow: StoreAllowlist,
        interface: str = "public",
        region: str | None = None,
    ) -> None:
        self._session = session
        self._keystone = keystone
        self._allow = allow
        self._interface = interface
        self._region = region
        self._keystone_threads = ThreadPoolExecutor(
            KEYSTONE_THREADS, thread_name_prefix="swift-auth"
        )
        #: v1 handshakes: (auth address, user) -> (storage URL, token)
        self._v1_tokens: dict[tuple[str, str], tuple[str, str]] = {}

    async def open(self, url: str, offset: int = 0) -> ImageBody:
        location = parse_location(url)
        for attempt in (1, 2):
            storage_url, token = await self._credentials(location, fresh=attempt > 1)
            headers = {"X-Auth-Token": token}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            target = self._allow.check(location.object_url(storage_url), location.display)
            try:
                response = await self._session.get(target, headers=headers,
                                                   allow_redirects=False)
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise UpstreamError(f"{location.display}: {exc!r}", reason="store") from exc
            refuse_redirect(location.display, response)
            if response.status == 401 and attempt == 1:
                response.close()
                self._forget(location)
                continue
            return store_body(location.display, response, offset,
                              read_timeout=self._session.timeout.sock_read)
        raise AssertionError("unreachable")  # pragma: no cover

    def _forget(self, location: SwiftLocation) -> None:
        if location.v1_auth:
            self._v1_tokens.pop((location.base, location.user or ""), None)
        elif self._keystone is not None:
            self._keystone.invalidate()

    async def _credentials(self, location: SwiftLocation, *, fresh: bool) -> tuple[str, str]:
        """(storage URL, token) for the location."""
        if location.v1_auth:
            cache_key = (location.base, location.user or "")
            if not fresh and cache_key in self._v1_tokens:
                return self._v1_tokens[cache_key]
            found = await self._v1_handshake(location)
            self._v1_tokens[cache_key] = found
            return found
        if self._keystone is None:
            raise UpstreamError(
                f"{location.display}: Keystone-authenticated Swift needs [upstream_auth]",
                reason="store",
            )
        # Its own threads, never the loop's default pool (see service_auth.KEYSTONE_THREADS).
        return await asyncio.get_running_loop().run_in_executor(
            self._keystone_threads, self._keystone_credentials, location
        )

    def _keystone_credentials(self, location: SwiftLocation) -> tuple[str, str]:
        """The storage URL and the session's token, only if that URL is the session's Swift.

        Blocking (keystoneauth may call Keystone): run in a thread.
        """
        session = self._keystone
        assert session is not None
        try:
            token = session.get_token()
            storage_url = location.base if location.user is None else session.get_endpoint(
                service_type="object-store", interface=self._interface,
                region_name=self._region,
            )
        except Exception as exc:  # keystoneauth raises many unrelated types
            raise UpstreamError(f"{location.display}: no token from [upstream_auth]: "
                                f"{type(exc).__name__}", reason="store") from exc
        if not token or not storage_url:
            raise UpstreamError(f"{location.display}: [upstream_auth] gave no token or no "
                                "object-store endpoint", reason="store")
        try:
            origin = Origin.of(yarl.URL(str(storage_url)))
        except ValueError as exc:
            raise StoreRefused(f"{location.display}: not a storage URL") from exc
        if origin not in self._catalog_origins(session):
            # a multi-tenant location naming some other host: the token stays here
            raise StoreRefused(f"{location.display}: not an object-store endpoint of the "
                               "[upstream_auth] catalog; its token is not sent there")
        return str(storage_url), str(token)

    def _catalog_origins(self, session: KeystoneSession) -> set[Origin]:
        """Scheme, host and port of each object-store endpoint in the session's catalog."""
        origins: set[Origin] = set()
        for interface in _INTERFACES:
            try:
                url = session.get_endpoint(service_type="object-store", interface=interface,
                                           region_name=self._region)
                if url:
                    origins.add(Origin.of(yarl.URL(str(url))))
            except Exception:  # keystoneauth: this interface has no endpoint
                continue
        return origins

    async def _v1_handshake(self, location: SwiftLocation) -> tuple[str, str]:
        auth = self._allow.check(location.base, location.display)
        headers = {"X-Auth-User": location.user or "", "X-Auth-Key": location.key or ""}
        try:
            async with self._session.get(auth, headers=headers,
                                         allow_redirects=False) as response:
                refuse_redirect(location.display, response)
                status = response.status
                storage_url = response.headers.get("X-Storage-Url", "")
                token = response.headers.get("X-Auth-Token", "")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(f"{location.display}: auth: {exc!r}", reason="store") from exc
        if status // 100 != 2 or not storage_url or not token:
            raise UpstreamError(f"{location.display}: the auth endpoint answered {status}",
                                reason="store")
        LOG.debug("swift: authenticated at %s", location.base)
        return storage_url, token
