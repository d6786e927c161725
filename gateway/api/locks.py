"""Kill-switch API under /_gateway/admin/locks: thin views over gateway.lockout."""

from __future__ import annotations

from flask import Blueprint

locks_blueprint = Blueprint("locks", __name__, url_prefix="/_gateway/admin/locks")
