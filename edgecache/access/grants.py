"""Glance's answer to "may this caller read this image, and what is it?", reused briefly.

Every image request, hits included, is decided by upstream Glance: a
``GET /v2/images/{id}`` made with the caller's own credentials. The
answer is reused for ``[upstream] auth_cache_ttl`` seconds, keyed by the image
and a hash of the caller's credentials (never the token itself). Concurrent
identical lookups share one upstream call.

Refusals are not reused: the next request asks Glance again. Each grant is also
remembered, with its time, for ``offline_auth_ttl``: while no Glance answers,
:meth:`MetadataCache.offline_answer` tells whether this same caller was allowed
this same image recently enough to be served a cached copy
(``serve_cached_on_upstream_failure``).

Seeing an image is not downloading it: Glance's ``download_image`` policy
(docs/behaviour.md, "Who may download") decides every download, hits, joins,
HEAD and ranges included. :class:`DownloadGrants` asks it with the caller's own
``GET /v2/images/{id}/file`` of one byte, and keeps the answer under the same
key, generation and rules as the record: reused for ``auth_cache_ttl``,
concurrent identical probes share one call, refusals are never reused, and a
grant is remembered for offline serving. A caller that starts a fill needs no
probe: its own data GET is one, and :meth:`DownloadGrants.note` records it.

Both memories are :class:`~edgecache.access.ttlmap.TTLMap` on the injected
:class:`~edgecache.clock.Clock`: bounded, and expired by monotonic time that a
test can move by hand.

Who is asking is a hash of the headers Glance authorizes by. In keystone mode
those are the tokens only (``KEYSTONE_CREDENTIALS``): the roles come from the
validated token, and a client's own ``X-Roles`` or ``X-Identity-Status`` must not
make one caller many (or many callers one).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Protocol

from edgecache.access.singleflight import SingleFlight
from edgecache.access.ttlmap import TTLMap
from edgecache.clock import SYSTEM, Clock
from edgecache.errors import UpstreamRefused
from edgecache.model import ImageMeta

#: The headers that say who is calling with ``auth_strategy = noauth`` (Glance may read
#: the roles from ``X-Roles`` then).
NOAUTH_CREDENTIALS = ("x-auth-token", "x-service-token", "x-roles")
#: ... and with ``auth_strategy = keystone``: the tokens; everything else is the token's.
KEYSTONE_CREDENTIALS = ("x-auth-token", "x-service-token")
#: Bound on remembered grants: a caller can add one only with a token Glance accepts.
_MAX_GRANTS = 65536
#: Bound on reused answers (as many as grants: each answer is one caller and image).
_MAX_ANSWERS = 65536


class MetadataSource(Protocol):
    async def image_metadata(self, image_id: str, headers: Mapping[str, str]) -> ImageMeta: ...


class DownloadSource(Protocol):
    async def may_download(self, image_id: str, headers: Mapping[str, str]) -> None: ...


#: (image id, generation, credentials key): one caller's view of one version of an image
GrantKey = tuple[str, int, str]


def credentials_key(
    headers: Mapping[str, str], names: tuple[str, ...] = NOAUTH_CREDENTIALS
) -> str:
    """A digest of the caller's credentials: who is asking, without storing secrets."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(headers.get(name, "").encode())
        digest.update(b"\0")
    return digest.hexdigest()


class MetadataCache:
    """Image records as the caller sees them, cached for ``ttl`` seconds."""

    def __init__(
        self,
        source: MetadataSource,
        *,
        ttl: float,
        offline_ttl: float = 0.0,
        clock: Clock = SYSTEM,
        max_answers: int = _MAX_ANSWERS,
        max_grants: int = _MAX_GRANTS,
        credential_headers: tuple[str, ...] = NOAUTH_CREDENTIALS,
    ) -> None:
        self._source = source
        self._credential_headers = credential_headers
        self.ttl = ttl
        self.offline_ttl = offline_ttl
        self._clock = clock
        #: (image id, generation, credentials key) -> what Glance said, for ``ttl``
        self._answers: TTLMap[tuple[str, int, str], ImageMeta] = TTLMap(
            ttl=ttl, max_size=max_answers, clock=clock
        )
        #: (image id, generation, credentials key) -> Glance's grant, for ``offline_ttl``
        self._grants: TTLMap[tuple[str, int, str], ImageMeta] = TTLMap(
            ttl=offline_ttl, max_size=max_grants, clock=clock
        )
        self._in_flight: SingleFlight[GrantKey, ImageMeta] = SingleFlight()
        # Bumped to forget an image: old keys simply stop matching and expire.
        self._generation: dict[str, int] = {}

    def key(self, image_id: str, headers: Mapping[str, str]) -> GrantKey:
        """Who asks about which version of an image: the key of every reused answer."""
        return (image_id, self._generation.get(image_id, 0),
                credentials_key(headers, self._credential_headers))

    async def get(self, image_id: str, headers: Mapping[str, str]) -> ImageMeta:
        """The image's record for this caller; Glance's refusals propagate as raised."""
        key = self.key(image_id, headers)
        cached = self._answers.get(key)
        if cached is not None:
            return cached
        asked = dict(headers)
        return await self._in_flight.run(key, lambda: self._lookup(key, asked))

    async def _lookup(self, key: GrantKey, headers: dict[str, str]) -> ImageMeta:
        try:
            meta = await self._source.image_metadata(key[0], headers)
        except UpstreamRefused:
            # The latest word: a later outage must not resurrect an older grant.
            self._grants.pop(key)
            raise
        # Under the generation asked about: if the image was forgotten
        # meanwhile, these keys no longer match and the answer is not reused.
        self._grants.set(key, meta)
        self._answers.set(key, meta)
        return meta

    def forget(self, image_id: str) -> None:
        """Stop reusing any answer about an image (it was deleted or changed)."""
        self._generation[image_id] = self._generation.get(image_id, 0) + 1

    def offline_answer(self, image_id: str, headers: Mapping[str, str]) -> ImageMeta | None:
        """Glance's last grant of this image to these credentials, if recent enough.

        Only for when no upstream answers at all: a refusal is never overridden.
        None when offline serving is off, or the grant is older than ``offline_ttl``.
        """
        meta = self._grants.get(self.key(image_id, headers))
        if meta is None or meta.status != "active":
            return None
        return meta


class DownloadGrants:
    """Glance's ``download_image`` verdict per caller and image, reused like the record.

    Keys come from ``metadata`` (:meth:`MetadataCache.key`), so forgetting an
    image there forgets its download grants too.
    """

    def __init__(
        self,
        source: DownloadSource,
        metadata: MetadataCache,
        *,
        clock: Clock = SYSTEM,
        max_answers: int = _MAX_ANSWERS,
        max_grants: int = _MAX_GRANTS,
    ) -> None:
        self._source = source
        self._metadata = metadata
        #: key -> True: Glance let this caller download, for ``auth_cache_ttl``
        self._answers: TTLMap[GrantKey, bool] = TTLMap(
            ttl=metadata.ttl, max_size=max_answers, clock=clock
        )
        #: key -> True, for ``offline_auth_ttl``
        self._grants: TTLMap[GrantKey, bool] = TTLMap(
            ttl=metadata.offline_ttl, max_size=max_grants, clock=clock
        )
        self._in_flight: SingleFlight[GrantKey, None] = SingleFlight()

    def key(self, image_id: str, headers: Mapping[str, str]) -> GrantKey:
        return self._metadata.key(image_id, headers)

    async def check(self, image_id: str, headers: Mapping[str, str]) -> None:
        """Return if this caller may download the image; raise Glance's refusal (or
        UpstreamError when no Glance answers)."""
        key = self.key(image_id, headers)
        if self._answers.get(key):
            return
        asked = dict(headers)
        await self._in_flight.run(key, lambda: self._probe(key, asked))

    async def _probe(self, key: GrantKey, headers: dict[str, str]) -> None:
        try:
            await self._source.may_download(key[0], headers)
        except UpstreamRefused:
            self.refused(key)
            raise
        self.note(key)

    def note(self, key: GrantKey) -> None:
        """Glance let this caller's own data GET through (a fill it started): a grant."""
        self._answers.set(key, True)
        self._grants.set(key, True)

    def refused(self, key: GrantKey) -> None:
        """Glance refused this caller: the latest word, an older grant is void."""
        self._answers.pop(key)
        self._grants.pop(key)

    def offline_granted(self, image_id: str, headers: Mapping[str, str]) -> bool:
        """Whether Glance let this caller download this image within ``offline_auth_ttl``."""
        return bool(self._grants.get(self.key(image_id, headers)))
