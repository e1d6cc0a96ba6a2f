"""A key manager that holds certificates in memory, for the fast tier's signature tests.

castellan loads it by class path (``[key_manager] backend``), exactly as it would load
Barbican's driver; it answers :meth:`get` like Barbican does for a stored certificate,
and a missing one with castellan's own ManagedObjectNotFoundError.
"""

from __future__ import annotations

from typing import Any, ClassVar

from castellan import options as castellan_options
from castellan.common import exception as castellan_exception
from castellan.common.objects import x_509
from oslo_config import cfg

from lab.signing import ImageSigner

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


class Signer(ImageSigner):
    """An ImageSigner whose certificate goes into InMemoryKeyManager."""

    def store(self) -> str:
        InMemoryKeyManager.certificates[self.uuid] = self.certificate_der
        return self.uuid
