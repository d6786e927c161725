"""Who may call the gateway's own APIs: a bearer token with a role from a trusted issuer."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import current_app, g, jsonify, request

from gateway.identity import AuthError, Principal

ADMIN = "admin"
AUDITOR = "auditor"


def error_response(status: int, error: str, message: str, **extra: Any) -> Any:
    return jsonify(error=error, message=message, **extra), status


def require_role(role: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Authenticate the caller and insist on `role`; the principal lands in `g.principal`."""

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            services = current_app.extensions["gateway"]
            try:
                principal: Principal = services.verifier.authenticate(
                    request.headers.get("Authorization")
                )
            except AuthError as failure:
                response = error_response(failure.status, failure.error, failure.description)
                if failure.status == 401:
                    response[0].headers["WWW-Authenticate"] = (
                        f'Bearer realm="gateway", error="{failure.error}"'
                    )
                return response
            if role not in principal.roles:
                return error_response(403, "forbidden", f"the '{role}' role is required")
            g.principal = principal
            return view(*args, **kwargs)

        return wrapper

    return decorator


def actor() -> str:
    principal: Principal = g.principal
    return principal.policy_subject
