"""Run one Swift server's WSGI app with its configuration below a given folder.

Swift reads ``/etc/swift/swift.conf`` unless told otherwise; this points
``swift_dir`` at the lab's state folder first. Run in the Swift venv as
``python swift_server.py SWIFT_DIR CONF_FILE APP_NAME``; this folder is then
first on ``sys.path``, which is how the proxy's pipeline finds
``swift_dict_cache``.
"""

from __future__ import annotations

import sys

from swift.common import utils
from swift.common.wsgi import run_wsgi


def main(argv: list[str]) -> int:
    swift_dir, conf_file, app = argv
    utils.set_swift_dir(swift_dir)
    status: int = run_wsgi(conf_file, app, verbose=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
