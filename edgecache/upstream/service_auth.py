"""Credentials for calls edgecache makes on its own behalf (prefetches).

A queued image is fetched long after, and independently of, the caller who
queued it (the queue even outlives restarts), so its token cannot be used.
With ``auth_strategy = keystone`` the ``[upstream_auth]`` keystoneauth1 session
supplies one; with noauth there is none to send.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

from edgecache.errors import UpstreamError

if TYPE_CHECKING:
    from keystoneauth1.session import Session


class Credentials(Protocol):
    async def headers(self) -> dict[str, str]:
        """Headers that authenticate a request to Glance (may be empty)."""
        ...

    async def project_id(self) -> str | None:
        """The project the token is scoped to (the key manager needs it), if any."""
        ...


class NoCredentials:
    """noauth: Glance accepts anonymous calls."""

    async def headers(self) -> dict[str, str]:
        return {}

    async def project_id(self) -> str | None:
        return None


#: Threads that may wait on Keystone for [upstream_auth] tokens. Their own, never
#: the loop's default pool: a hung Keystone then holds these, not the threads that
#: commit images, answer the health check or read for sendfile's fallback.
KEYSTONE_THREADS = 2


class KeystoneCredentials:
    """A service token from a keystoneauth1 session, renewed by the session before expiry."""

    def __init__(self, session: Session, *, threads: int = KEYSTONE_THREADS) -> None:
        self._session = session
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="upstream-auth")

    async def headers(self) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        try:
            # Blocking (requests): it may call Keystone for a new token.
            headers = await loop.run_in_executor(self._threads, self._session.get_auth_headers)
        except Exception as exc:  # keystoneauth raises many unrelated types
            raise UpstreamError(f"no token from [upstream_auth]: {exc}", reason="connect") from exc
        if not headers:
            raise UpstreamError("[upstream_auth] gave no token", reason="connect")
        return {str(k): str(v) for k, v in headers.items()}

    async def project_id(self) -> str | None:
        loop = asyncio.get_running_loop()
        try:
            project = await loop.run_in_executor(self._threads, self._session.get_project_id)
        except Exception as exc:  # keystoneauth raises many unrelated types
            raise UpstreamError(f"no project from [upstream_auth]: {exc}",
                                reason="connect") from exc
        return str(project) if project else None


def credentials_for(session: Session | None) -> Credentials:
    return KeystoneCredentials(session) if session is not None else NoCredentials()
