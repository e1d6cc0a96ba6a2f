"""Issue a Keystone token with a lifetime of its own (run in the Keystone venv).

Keystone sets one lifetime for every token it issues. This loads Keystone's own
application in-process from a copy of the configuration that differs only in
``[token] expiration`` (``OS_KEYSTONE_CONFIG_DIR``) and asks it for a token.
Same database and fernet keys, so the running Keystone accepts the token until
it expires. Reads the ``POST /v3/auth/tokens`` body on stdin, prints the token.
"""

from __future__ import annotations

import json
import sys

from keystone.server import wsgi
from werkzeug.test import Client


def main() -> int:
    body = json.loads(sys.stdin.read())
    answer = Client(wsgi.initialize_public_application()).post("/v3/auth/tokens", json=body)
    if answer.status_code != 201:
        text = answer.get_data(as_text=True)
        print(f"POST /v3/auth/tokens -> {answer.status_code}: {text}", file=sys.stderr)
        return 1
    print(answer.headers["X-Subject-Token"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
