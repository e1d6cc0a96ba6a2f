"""Glance image signatures, verified in the fill's one pass over the bytes.

An image that carries ``img_signature``, ``img_signature_hash_method``,
``img_signature_key_type`` and ``img_signature_certificate_uuid`` was signed by
its uploader over its bytes; the certificate lives in the key manager. With
``[image_safety] verify_signatures``, a fill asks for the certificate before
its first byte (:class:`SignatureCheck`, through ``upstream/keymanager.py``),
feeds every byte to the verifier beside the hash, and checks the signature
before the last byte is released. The verifiers are cursive's, the library Nova
and Glance verify with; nothing of the cryptography is ours.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cursive import exception as cursive_exception
from cursive import signature_utils

from edgecache.errors import CertificateRefused, UnsafeImage
from edgecache.model import ImageMeta, SignatureProperties

#: ``certificates(uuid, caller_headers, project_id)``: the signing certificate, from the
#: key manager as the caller whose request started the fill (its token, and the project
#: the token is scoped to); raises :class:`CertificateUnavailable`.
CertificateSource = Callable[
    [str, Mapping[str, str], str | None], Awaitable[x509.Certificate]
]

#: the refusal reasons (``edgecache_image_safety_rejections_total{reason}``) of this module
SIGNATURE_REASONS = frozenset({"signature", "unsigned"})


class CertificateUnavailable(Exception):
    """The key manager has no such certificate, or would not give it."""


class Verifier(Protocol):
    """cursive's verifiers: fed the image's bytes, then asked once."""

    def update(self, data: bytes | memoryview) -> None: ...

    def verify(self) -> None: ...


class SignatureCheck:
    """Makes each fill's verifier: from the image's properties and its certificate."""

    def __init__(self, certificates: CertificateSource, *, require: bool = False) -> None:
        self._certificates = certificates
        #: ``[image_safety] require_signatures``: an image without a signature is refused
        self.require = require

    async def verifier(
        self, meta: ImageMeta, headers: Mapping[str, str], project_id: str | None = None
    ) -> Verifier | None:
        """The verifier the fill of ``meta`` feeds; None for an unsigned image allowed
        through. Raises :class:`UnsafeImage` for an image that cannot be verified, and
        :class:`CertificateRefused` when the key manager will not give this caller
        the certificate."""
        props = meta.signature
        if props is None:
            if self.require:
                raise UnsafeImage(meta.id, "unsigned",
                                  "it carries no img_signature and signatures are required")
            return None
        missing = [name for name, value in (
            ("img_signature", props.signature),
            ("img_signature_hash_method", props.hash_method),
            ("img_signature_key_type", props.key_type),
            ("img_signature_certificate_uuid", props.certificate_uuid),
        ) if value is None]
        if missing:
            raise UnsafeImage(meta.id, "signature", f"missing {', '.join(missing)}")
        assert props.certificate_uuid is not None
        try:
            certificate = await self._certificates(props.certificate_uuid, headers, project_id)
        except CertificateUnavailable as exc:  # this caller's, not the image's
            raise CertificateRefused(meta.id, f"its certificate: {exc}") from exc
        return verifier_for(meta.id, props, certificate)


def verifier_for(
    image_id: str, props: SignatureProperties, certificate: x509.Certificate
) -> Verifier:
    """cursive's verifier for these properties and this certificate's public key."""
    try:
        signature = signature_utils.get_signature(props.signature)
        hash_method = signature_utils.get_hash_method(props.hash_method)
        key_type = signature_utils.SignatureKeyType.lookup(props.key_type)
        public_key = certificate.public_key()
        if not isinstance(public_key, key_type.public_key_type):
            raise cursive_exception.SignatureVerificationError(
                reason=f"the certificate's key is not a {props.key_type} key")
        verifier: Verifier | None = key_type.create_verifier(signature, hash_method, public_key)
    except cursive_exception.SignatureVerificationError as exc:
        raise UnsafeImage(image_id, "signature", str(exc)) from exc
    if verifier is None:
        raise UnsafeImage(image_id, "signature", "no verifier for these properties")
    return verifier


def check(image_id: str, verifier: Verifier) -> None:
    """Every byte has been fed: raises :class:`UnsafeImage` unless the signature holds."""
    try:
        verifier.verify()
    except InvalidSignature as exc:
        raise UnsafeImage(image_id, "signature",
                          "its bytes do not match its img_signature") from exc
