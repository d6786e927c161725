"""Thin Flask blueprints under the reserved /_gateway prefix."""

from gateway.api.health import health_blueprint

__all__ = ["health_blueprint"]
