"""Contractor access-governance gateway."""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request

from gateway.config import Config
from gateway.logs import access

__all__ = ["create_app"]

RESERVED_PREFIX = "/_gateway"
# Probed every few seconds by orchestrators and load balancers: not worth a line each.
_PROBES = frozenset({RESERVED_PREFIX + "/health", RESERVED_PREFIX + "/ready"})


class _Dispatcher:
    """Send `/_gateway/...` to Flask's own views and everything else through the pipeline.

    Proxied paths bypass Flask's router on purpose: it would merge `//`, redirect on
    trailing slashes and decode the path before our normaliser could see the raw form.
    """

    def __init__(self, flask_wsgi: Any, pipeline: Any) -> None:
        self.flask_wsgi = flask_wsgi
        self.pipeline = pipeline

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == RESERVED_PREFIX or path.startswith(RESERVED_PREFIX + "/"):
            return self._view(environ, start_response, path)
        response = self.pipeline.handle(Request(environ))
        return response(environ, start_response)

    def _view(self, environ: dict[str, Any], start_response: Any, path: str) -> Any:
        if path in _PROBES:
            return self.flask_wsgi(environ, start_response)
        started = time.perf_counter()

        def started_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            access.view_done(
                environ.get("REQUEST_METHOD", ""),
                path,
                int(status.split(" ", 1)[0]),
                started,
                environ.get("REMOTE_ADDR"),
            )
            return start_response(status, headers, exc_info)

        return self.flask_wsgi(environ, started_response)


def _json_http_error(error: HTTPException) -> Any:
    name = (error.name or "error").lower().replace(" ", "_")
    return jsonify(error=name, message=error.description), error.code or 500


def create_app(config: Config) -> Flask:
    from gateway import logs, notify
    from gateway.api import register_blueprints
    from gateway.logs.secrets import register_config_secrets
    from gateway.services import build_services

    logs.configure()
    access.configure(enabled=config.server.access_log)
    register_config_secrets(config)
    app = Flask(__name__)
    # Redirects for '//' or a missing trailing slash would echo the client's Host header.
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False
    from gateway import metrics

    metrics.configure(
        enabled=config.metrics.enabled, vendor_label_limit=config.metrics.vendor_label_limit
    )
    services = build_services(config)
    notify.configure(config, services.db)
    app.extensions["gateway"] = services
    register_blueprints(app)
    if config.console.enabled:
        from gateway.console.views import install_console

        install_console(app)
    app.register_error_handler(HTTPException, _json_http_error)
    app.wsgi_app = _Dispatcher(app.wsgi_app, services.pipeline)  # type: ignore[method-assign]
    return app
