"""Where direct store reads may go: ``[upstream] direct_store_allow``.

A store location comes from an image record, which anyone allowed to set an
image's locations writes; edgecache must not turn it into a request (with
edgecache's own credentials, or from edgecache's network position) to a place
the operator did not choose. So every URL a store backend is about to contact,
after the backend has turned the location into the URL it really requests
(docs/behaviour.md#direct-store-reads), is checked here first against the
operator's prefixes, and anything else is a :class:`StoreRefused`: the fill
reads through Glance's ``/file`` instead.

Prefixes are compared on parsed URLs with yarl, the parser aiohttp itself sends
requests with: scheme, host and port (default ports made explicit) must be
equal, and the path must start with the prefix's path at a segment boundary.
URLs carrying user information, encoded slashes or backslashes, or dot
segments are refused outright rather than interpreted.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
import yarl

from edgecache.errors import ConfigError, UpstreamError

#: schemes a request of a store backend can use (s3 and swift read over http(s))
TARGET_SCHEMES = ("file", "http", "https")

#: percent-encoded ``/``, ``\`` and NUL: a server may decode them into a path we never checked
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c|00)", re.IGNORECASE)


class StoreRefused(UpstreamError):
    """A store location edgecache will not contact; the bytes come from Glance instead.

    Counted as ``edgecache_upstream_errors_total{reason="store_refused"}``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="store_refused")


@dataclass(frozen=True)
class Origin:
    """Scheme, host and port of a URL, the port made explicit (RFC 6454 §4)."""

    scheme: str
    host: str
    port: int | None

    @classmethod
    def of(cls, url: yarl.URL) -> Origin:
        return cls(url.scheme.lower(), (url.host or "").lower(), url.port)


@dataclass(frozen=True)
class _Prefix:
    origin: Origin
    #: decoded path; ends with "/" unless the prefix names one file or object
    path: str

    def covers(self, origin: Origin, path: str) -> bool:
        if origin != self.origin:
            return False
        if self.path.endswith("/"):
            return path.startswith(self.path)
        return path == self.path or path.startswith(self.path + "/")


def parse_target(url: str | yarl.URL) -> yarl.URL:
    """``url`` parsed the way aiohttp will send it; StoreRefused when it is not plainly a URL.

    Refused: another scheme than file/http/https, user information, a
    ``file://`` URL naming another host (RFC 8089 §2), a path with encoded
    separators, backslashes or ``.``/``..`` segments.
    """
    try:
        parsed = url if isinstance(url, yarl.URL) else yarl.URL(url)
    except (ValueError, TypeError) as exc:
        raise StoreRefused(f"not a URL: {exc}") from exc
    scheme = parsed.scheme.lower()
    if scheme not in TARGET_SCHEMES:
        raise StoreRefused(f"{scheme or 'no'} scheme: not a store URL")
    if parsed.user is not None or parsed.password is not None or "@" in parsed.raw_authority:
        raise StoreRefused("a URL with user information")
    if scheme == "file":
        if (parsed.host or "") not in ("", "localhost") or parsed.explicit_port is not None:
            raise StoreRefused("a file URL naming another host")
    elif not parsed.host:
        raise StoreRefused("a URL without a host")
    path = parsed.path
    if _ENCODED_SEPARATOR.search(parsed.raw_path) or "\\" in path or "\x00" in path:
        raise StoreRefused("a path with encoded separators")
    if any(segment in (".", "..") for segment in path.split("/")):
        raise StoreRefused("a path with dot segments")
    return parsed


class StoreAllowlist:
    """The URL prefixes direct store reads may open; empty: none at all."""

    def __init__(self, prefixes: Iterable[str] = ()) -> None:
        self._prefixes: list[_Prefix] = []
        self.entries: tuple[str, ...] = tuple(p.strip() for p in prefixes if p.strip())
        for entry in self.entries:
            shown = redact(entry)  # a prefix written with a password must not be echoed
            try:
                parsed = parse_target(entry)
            except StoreRefused as exc:
                raise ConfigError(f"[upstream] direct_store_allow: {shown!r}: {exc}") from exc
            written = urllib.parse.urlsplit(entry).path.split("/")
            if any(urllib.parse.unquote(segment) in (".", "..") for segment in written):
                # yarl would quietly normalise them into a wider prefix than written
                raise ConfigError(f"[upstream] direct_store_allow: {shown!r}: a prefix "
                                  "with dot segments")
            if parsed.query_string or parsed.fragment:
                raise ConfigError(f"[upstream] direct_store_allow: {shown!r}: a prefix "
                                  "has no query or fragment")
            path = parsed.path or "/"
            if parsed.scheme == "file":
                # the directory as the kernel resolves it: a symlinked store is
                # compared by where its files really are
                path = os.path.realpath(path) + ("/" if path.endswith("/") else "")
            self._prefixes.append(_Prefix(Origin.of(parsed), path))

    def __bool__(self) -> bool:
        return bool(self._prefixes)

    def check(self, url: str | yarl.URL, display: str) -> yarl.URL:
        """The parsed URL when some prefix covers it, else StoreRefused.

        ``display`` names the location in the message (without credentials).
        A ``file://`` URL must be checked by its resolved path
        (:meth:`check_file`).
        """
        try:
            parsed = parse_target(url)
        except StoreRefused as exc:
            raise StoreRefused(f"{display}: {exc}") from exc
        origin = Origin.of(parsed)
        if not any(p.covers(origin, parsed.path) for p in self._prefixes):
            raise StoreRefused(f"{display}: not under [upstream] direct_store_allow")
        return parsed

    def check_file(self, url: str, display: str) -> str:
        """The real path of a ``file://`` URL when some prefix covers it, else StoreRefused.

        Blocking (it resolves symlinks on the file system): call it in a thread.
        """
        try:
            parsed = parse_target(url)  # odd shapes are refused before the disk is touched
        except StoreRefused as exc:
            raise StoreRefused(f"{display}: {exc}") from exc
        if parsed.scheme != "file":
            raise StoreRefused(f"{display}: not a file URL")
        real = os.path.realpath(parsed.path)
        self.check(yarl.URL.build(scheme="file", path=real), display)
        return real


def redact(url: str) -> str:
    """``url`` for messages: no user information, no query (it may carry a signature)."""
    url = url.split("#", 1)[0].split("?", 1)[0]
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/]*@", r"\1", url)


def refuse_redirect(display: str, response: aiohttp.ClientResponse) -> None:
    """A store answering 3xx is refused: its redirect would go where nothing was checked."""
    if 300 <= response.status < 400:
        response.close()
        raise StoreRefused(f"{display}: answered {response.status} (a redirect, not followed)")
