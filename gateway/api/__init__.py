"""Thin Flask blueprints under the reserved /_gateway prefix."""

from gateway.api.admin import admin_blueprint
from gateway.api.health import health_blueprint

__all__ = ["admin_blueprint", "health_blueprint"]
