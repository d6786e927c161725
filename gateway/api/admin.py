"""Admin API under /_gateway/admin/: thin views over gateway.policy.admin."""

from __future__ import annotations

from flask import Blueprint

admin_blueprint = Blueprint("admin", __name__, url_prefix="/_gateway/admin")
