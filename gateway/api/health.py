"""Liveness, readiness and the gateway's public keys. Never forwarded upstream."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

health_blueprint = Blueprint("health", __name__, url_prefix="/_gateway")


@health_blueprint.get("/health")
def health():  # type: ignore[no-untyped-def]
    return jsonify(status="ok")


@health_blueprint.get("/ready")
def ready():  # type: ignore[no-untyped-def]
    checks = readiness_checks(current_app.extensions["gateway"])
    is_ready = all(value == "ok" for value in checks.values())
    return jsonify(status="ready" if is_ready else "not_ready", checks=checks), (
        200 if is_ready else 503
    )


def readiness_checks(services) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """This worker's view of what it depends on: "ok" or what is wrong, by part."""
    checks: dict[str, str] = {}
    try:
        with services.db.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception:
        checks["database"] = "unreachable"
    checks["audit_writer"] = (
        "ok" if services.audit.healthy and _audit_table_ok(services) else "failing"
    )
    checks["policy"] = "ok" if services.policy.loaded else "not_loaded"
    checks["locks"] = "ok" if services.locks.fresh else "stale"
    issuers_ok = True
    for issuer in services.verifier.issuers:
        try:
            issuer.keys_for(None)
        except Exception:
            issuers_ok = False
    checks["issuer_keys"] = "ok" if issuers_ok else "unavailable"
    return checks


def _audit_table_ok(services) -> bool:  # type: ignore[no-untyped-def]
    """The writer of another worker may have failed; look at the table itself too."""
    try:
        with services.db.connect() as connection:
            connection.execute(text("SELECT 1 FROM access_log WHERE 1 = 0"))
        return True
    except Exception:
        return False


@health_blueprint.get("/jwks.json")
def jwks():  # type: ignore[no-untyped-def]
    services = current_app.extensions["gateway"]
    return jsonify(services.keys.public_jwks())


@health_blueprint.route(
    "/", defaults={"rest": ""}, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]
)
@health_blueprint.route("/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def unknown(rest: str):  # type: ignore[no-untyped-def]
    return jsonify(error="not_found", message="no such gateway endpoint"), 404
