"""A bare pass-through Flask proxy: the baseline the gateway's overhead is measured against.

It does what any Flask reverse proxy must do and nothing the gateway adds: no token check,
no route map, no policy, no record parsing, no audit. The request's path and query go to
the upstream over one pooled urllib3 connection set, with the upstream's service
credential; status, body and content type come back.

    BARE_UPSTREAM_URL=http://127.0.0.1:9000 BARE_UPSTREAM_AUTHORIZATION='Token ...' \
        gunicorn -k gthread -w 2 --threads 8 --pythonpath bench bare_proxy:app

Configured by environment only, so it runs under exactly the gunicorn command line the
gateway runs under.
"""

from __future__ import annotations

import os

import urllib3
from flask import Flask, Response, request

UPSTREAM_URL = os.environ.get("BARE_UPSTREAM_URL", "http://127.0.0.1:9000")
UPSTREAM_AUTHORIZATION = os.environ.get("BARE_UPSTREAM_AUTHORIZATION", "")
# Same pool shape as the gateway's Upstream (UpstreamConfig.pool_size = 32, non-blocking).
POOL_SIZE = int(os.environ.get("BARE_POOL_SIZE", "32"))

_pool = urllib3.connection_from_url(
    UPSTREAM_URL,
    maxsize=POOL_SIZE,
    block=False,
    retries=False,
    timeout=urllib3.Timeout(connect=3.0, read=30.0),
)
_headers = {"Accept-Encoding": "identity"}
if UPSTREAM_AUTHORIZATION:
    _headers["Authorization"] = UPSTREAM_AUTHORIZATION

app = Flask(__name__)


@app.route("/", defaults={"path": ""}, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
@app.route("/<path:path>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def forward(path: str) -> Response:
    # The raw request target, as the gateway forwards it (no re-encoding of the path).
    target = request.environ.get("RAW_URI") or request.full_path
    body = request.get_data() if request.method != "GET" else None
    upstream = _pool.urlopen(
        request.method,
        target,
        body=body,
        headers=_headers,
        redirect=False,
        retries=False,
        preload_content=True,
        decode_content=False,
        assert_same_host=False,
    )
    return Response(
        upstream.data,
        status=upstream.status,
        content_type=upstream.headers.get("Content-Type"),
    )
