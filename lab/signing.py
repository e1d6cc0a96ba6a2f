"""Sign images as their uploaders would, and a key manager the benchmarks can point at.

Glance's image signatures are made by whoever uploads the image: an RSA key, its
certificate stored in the key manager, and the ``img_signature*`` properties on
the image. :class:`ImageSigner` does that for tests and benchmarks (RSA-PSS over
SHA-256, what Glance's documentation shows), for bytes in memory or a file
of any size (hashed as it is read, then the digest signed).

:class:`DirectoryKeyManager` is a castellan backend (``[key_manager] backend =
lab.signing.DirectoryKeyManager``) that answers ``get`` from ``<uuid>.der`` files
in ``$EDGECACHE_CERTIFICATE_DIR``: the benchmark measures what verifying costs a
fill, not Barbican; the integration tests run the real Barbican.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import NameOID

#: where :class:`DirectoryKeyManager` finds its certificates
CERTIFICATE_DIR_ENV = "EDGECACHE_CERTIFICATE_DIR"

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)


class ImageSigner:
    """An RSA key and its self-signed certificate, known by a uuid as the key manager will."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgecache image signer")])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(self.key, hashes.SHA256())
        )
        self.uuid = str(uuid.uuid4())

    @property
    def certificate_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def properties(self, data: bytes, *, certificate_uuid: str | None = None) -> dict[str, str]:
        """The ``img_signature*`` properties of ``data`` signed with this key, as
        ``openstack image create --property`` would set them."""
        return self._properties(hashlib.sha256(data).digest(), certificate_uuid)

    def properties_of_file(self, path: Path) -> dict[str, str]:
        """:meth:`properties` of a file's bytes, read once in blocks (images are large)."""
        digest = hashlib.sha256()
        with path.open("rb") as image:
            while block := image.read(4 << 20):
                digest.update(block)
        return self._properties(digest.digest(), None)

    def _properties(self, digest: bytes, certificate_uuid: str | None) -> dict[str, str]:
        signature = self.key.sign(digest, _PSS, Prehashed(hashes.SHA256()))
        return {
            "img_signature": base64.b64encode(signature).decode(),
            "img_signature_hash_method": "SHA-256",
            "img_signature_key_type": "RSA-PSS",
            "img_signature_certificate_uuid": certificate_uuid or self.uuid,
        }

    def save(self, directory: Path) -> None:
        """Put the certificate where :class:`DirectoryKeyManager` looks for it."""
        (directory / f"{self.uuid}.der").write_bytes(self.certificate_der)


class DirectoryKeyManager:
    """castellan's ``get``, answered from ``$EDGECACHE_CERTIFICATE_DIR/<uuid>.der``."""

    def __init__(self, configuration: Any) -> None:
        self.conf = configuration
        self.directory = Path(os.environ[CERTIFICATE_DIR_ENV])

    def get(self, context: Any, managed_object_id: str, **_: Any) -> Any:
        from castellan.common import exception as castellan_exception
        from castellan.common.objects import x_509

        try:
            path = self.directory / f"{uuid.UUID(managed_object_id)}.der"  # no other paths
        except ValueError:
            path = None
        if path is None or not path.is_file():
            raise castellan_exception.ManagedObjectNotFoundError(uuid=managed_object_id)
        return x_509.X509(path.read_bytes())
