"""Signing certificates from the key manager, through castellan (Barbican in practice).

``[image_safety] verify_signatures`` needs each signed image's certificate
(``img_signature_certificate_uuid``) before its fill's first byte. castellan
reads its own ``[key_manager]`` and ``[barbican]`` options, as in Nova and
Glance; the certificate is asked for with the token of the caller whose request
started the fill (scoped to its project), so the key manager's own access rules
apply; a key manager that does not answer is a 503, like a dead Glance. castellan's calls
block: they run in threads of their own, never in the loop's default pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cryptography import x509
from oslo_config import cfg

from edgecache.core.signature import CertificateUnavailable
from edgecache.errors import UpstreamError

#: Concurrent key-manager calls (one per signed image being filled at once).
THREADS = 2


class CastellanCertificates:
    """``certificates(uuid, headers)`` for :class:`~edgecache.core.signature.SignatureCheck`."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        from castellan import key_manager

        self._manager: Any = key_manager.API(conf)
        self._threads = ThreadPoolExecutor(THREADS, thread_name_prefix="key-manager")

    async def __call__(
        self, uuid: str, headers: Mapping[str, str], project_id: str | None
    ) -> x509.Certificate:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._threads, self._fetch, uuid, dict(headers), project_id
        )

    def _fetch(
        self, uuid: str, headers: Mapping[str, str], project_id: str | None
    ) -> x509.Certificate:
        from castellan.common import exception as castellan_exception
        from castellan.common.objects import x_509
        from oslo_context import context

        lowered = {name.lower(): value for name, value in headers.items()}
        caller = context.RequestContext(
            auth_token=lowered.get("x-auth-token"), project_id=project_id,
        )
        try:
            managed = self._manager.get(caller, uuid)
        except castellan_exception.ManagedObjectNotFoundError as exc:
            raise CertificateUnavailable(f"no certificate {uuid} in the key manager") from exc
        except castellan_exception.KeyManagerError as exc:
            raise CertificateUnavailable(f"the key manager refused {uuid}: {exc}") from exc
        except Exception as exc:  # keystoneauth and requests raise many unrelated types
            raise UpstreamError(f"the key manager did not answer for {uuid}: {exc}",
                                reason="connect") from exc
        encoded = managed.get_encoded() if isinstance(managed, x_509.X509) else None
        if encoded is None:
            raise CertificateUnavailable(f"{uuid} is not an X.509 certificate")
        try:
            return x509.load_der_x509_certificate(encoded)
        except ValueError as exc:
            raise CertificateUnavailable(f"{uuid} does not parse as X.509: {exc}") from exc

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
