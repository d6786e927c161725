"""Anomaly alerts API under /_gateway/audit/alerts (auditor role)."""

from __future__ import annotations

from flask import Blueprint

alerts_blueprint = Blueprint("alerts", __name__, url_prefix="/_gateway/audit/alerts")
