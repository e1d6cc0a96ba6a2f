"""Build one-replica account, container and object rings (run in the Swift venv).

``python swift_rings.py SWIFT_DIR ACCOUNT_PORT CONTAINER_PORT OBJECT_PORT``: one
device ``d1`` on 127.0.0.1 per ring, so a single-node Swift needs no
``swift-ring-builder`` runs.
"""

from __future__ import annotations

import sys

from swift.common.ring import RingBuilder


def main(argv: list[str]) -> int:
    etc, *ports = argv
    for kind, port in zip(("account", "container", "object"), ports, strict=True):
        builder = RingBuilder(6, 1, 1)
        builder.add_dev({"region": 1, "zone": 1, "ip": "127.0.0.1", "port": int(port),
                         "device": "d1", "weight": 100})
        builder.rebalance()
        builder.save(f"{etc}/{kind}.builder")
        builder.get_ring().save(f"{etc}/{kind}.ring.gz")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
