"""Auditor API under /_gateway/audit/: thin views over gateway.audit."""

from __future__ import annotations

from flask import Blueprint

audit_blueprint = Blueprint("audit", __name__, url_prefix="/_gateway/audit")
