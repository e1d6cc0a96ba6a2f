"""Glance's version documents, pointing at edgecache itself.

keystoneauth and openstacksdk take the ``self`` href of the chosen version as
the service URL, so the links must name edgecache, not the upstream Glance.
``GET /versions`` answers 200 (glanceclient treats a 300 there as an error);
any other unversioned path answers 300, as Glance's version negotiation does.
"""

from __future__ import annotations

import json

from aiohttp import web

#: (version, status). 2.14+ are the cache API's versions (glanceclient's cache
#: commands look for v2.14); 2.18 adds cache clean/prune.
VERSIONS: tuple[tuple[str, str], ...] = (
    ("2.18", "CURRENT"),
    *((f"2.{minor}", "SUPPORTED") for minor in range(17, -1, -1)),
)


def versions_document(base_url: str) -> dict[str, list[dict[str, object]]]:
    href = base_url.rstrip("/") + "/v2/"
    return {
        "versions": [
            {"id": f"v{version}", "status": status, "links": [{"rel": "self", "href": href}]}
            for version, status in VERSIONS
        ]
    }


def versions_response(request: web.Request, prefix: str, *, explicit: bool) -> web.Response:
    """The document for a deployment mounted at ``prefix`` (usually empty)."""
    forwarded_proto = request.headers.get("X-Forwarded-Proto")
    scheme = forwarded_proto.split(",")[0].strip() if forwarded_proto else request.scheme
    host = request.headers.get("X-Forwarded-Host") or request.host
    body = json.dumps(versions_document(f"{scheme}://{host}{prefix}")).encode()
    return web.Response(
        status=200 if explicit else 300, body=body, content_type="application/json"
    )
