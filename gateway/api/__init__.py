"""Thin Flask blueprints under the reserved /_gateway prefix."""

from flask import Flask

from gateway.api import audit_export  # noqa: F401 - registers export routes on audit_blueprint
from gateway.api.admin import admin_blueprint
from gateway.api.alerts import alerts_blueprint
from gateway.api.audit import audit_blueprint
from gateway.api.health import health_blueprint
from gateway.api.locks import locks_blueprint
from gateway.api.metrics import metrics_blueprint


def register_blueprints(app: Flask) -> None:
    """Every route under /_gateway (the OpenAPI document describes exactly these)."""
    for blueprint in (
        locks_blueprint,
        admin_blueprint,
        audit_blueprint,
        alerts_blueprint,
        health_blueprint,
        metrics_blueprint,
    ):
        app.register_blueprint(blueprint)


__all__ = [
    "admin_blueprint",
    "alerts_blueprint",
    "audit_blueprint",
    "health_blueprint",
    "locks_blueprint",
    "metrics_blueprint",
    "register_blueprints",
]
