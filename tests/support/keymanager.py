"""A key manager that holds certificates in memory, for the fast tier's signature tests.

castellan loads it by class path (``[key_manager] backend``), exactly as it would load
Barbican's driver; it answers :meth:`get` like Barbican does for a stored certificate,
and a missing one with castellan's own ManagedObjectNotFoundError.
"""

from __future__ import annotations

import base64
import datetime
import uuid
from typing import Any, ClassVar

from castellan import options as castellan_options
from castellan.common import exception as castellan_exception
from castellan.common.objects import x_509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from oslo_config import cfg

BACKEND = f"{__name__}.InMemoryKeyManager"


class InMemoryKeyManager:
    """castellan's ``get`` over a class-wide dict of DER certificates, by uuid."""

    certificates: ClassVar[dict[str, bytes]] = {}
    #: the contexts it was asked with (whose token fetched each certificate)
    asked: ClassVar[list[Any]] = []

    def __init__(self, configuration: cfg.ConfigOpts) -> None:
        self.conf = configuration

    def get(self, context: Any, managed_object_id: str, **_: Any) -> x_509.X509:
        self.asked.append(context)
        der = self.certificates.get(managed_object_id)
        if der is None:
            raise castellan_exception.ManagedObjectNotFoundError(uuid=managed_object_id)
        return x_509.X509(der)


def key_manager_conf() -> cfg.ConfigOpts:
    """A configuration whose castellan backend is :class:`InMemoryKeyManager`."""
    conf = cfg.ConfigOpts()
    conf([], project="edgecache-tests")
    castellan_options.set_defaults(conf, backend=BACKEND)
    return conf


class Signer:
    """An RSA key and its self-signed certificate, stored in the key manager."""

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

    def store(self) -> str:
        InMemoryKeyManager.certificates[self.uuid] = self.certificate.public_bytes(
            serialization.Encoding.DER
        )
        return self.uuid

    def properties(self, data: bytes, *, certificate_uuid: str | None = None) -> dict[str, str]:
        """The ``img_signature*`` properties of ``data`` signed with this key (RSA-PSS,
        SHA-256), as ``openstack image create --property`` would set them."""
        signature = self.key.sign(
            data,
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH),
            hashes.SHA256(),
        )
        return {
            "img_signature": base64.b64encode(signature).decode(),
            "img_signature_hash_method": "SHA-256",
            "img_signature_key_type": "RSA-PSS",
            "img_signature_certificate_uuid": certificate_uuid or self.uuid,
        }
