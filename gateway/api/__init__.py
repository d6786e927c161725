"""Thin Flask blueprints under the reserved /_gateway prefix."""

from gateway.api import audit_export  # noqa: F401 - registers export routes on audit_blueprint
from gateway.api.admin import admin_blueprint
from gateway.api.alerts import alerts_blueprint
from gateway.api.audit import audit_blueprint
from gateway.api.health import health_blueprint
from gateway.api.locks import locks_blueprint

__all__ = [
    "admin_blueprint",
    "alerts_blueprint",
    "audit_blueprint",
    "health_blueprint",
    "locks_blueprint",
]
