"""`/_gateway/metrics`: Prometheus metrics, for the scrape token or a configured network."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from gateway.metrics.exposition import render

metrics_blueprint = Blueprint("metrics", __name__, url_prefix="/_gateway")


@metrics_blueprint.get("/metrics")
def metrics():  # type: ignore[no-untyped-def]
    access = current_app.extensions["gateway"].scrape_access
    if not access.exposed:
        return jsonify(
            error="not_found",
            message="metrics are not served here: set [metrics] token or networks, or bind",
        ), 404
    authorization = request.headers.get("Authorization")
    forwarded = "X-Forwarded-For" in request.headers or "Forwarded" in request.headers
    if not access.allows(authorization, request.remote_addr, forwarded=forwarded):
        if authorization:
            # A contractor's (or anyone's) token is not the scrape token.
            return jsonify(error="forbidden", message="not a metrics scraper"), 403
        response = jsonify(error="unauthorized", message="the scrape token is required")
        response.headers["WWW-Authenticate"] = 'Bearer realm="gateway-metrics"'
        return response, 401
    body, content_type = render(request.headers.get("Accept"))
    return Response(body, content_type=content_type)
