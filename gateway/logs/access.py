"""One access line per request, in the log's shape (the access log proper is the
database's; this line is for the operator's log pipeline)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.context import RequestContext

log = logging.getLogger("gateway.access")
_state = {"enabled": True}


def configure(*, enabled: bool) -> None:
    _state["enabled"] = enabled


def request_done(ctx: RequestContext, status: int, started: float) -> None:
    if not _state["enabled"] or not log.isEnabledFor(logging.INFO):
        return
    principal, match = ctx.principal, ctx.match
    log.info(
        "%s %s %d",
        ctx.method,
        ctx.raw_path,
        status,
        extra={
            "request_id": ctx.request_id,
            "method": ctx.method,
            "path": ctx.raw_path,
            "route": match.route.config.path if match is not None else None,
            "subject": principal.policy_subject if principal is not None else None,
            "vendor": principal.vendor if principal is not None else None,
            "decision": "deny" if ctx.refusal is not None else "allow",
            "reason": ctx.refusal,
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "client_ip": ctx.client_ip,
        },
    )


def view_done(method: str, path: str, status: int, started: float, client_ip: str | None) -> None:
    """A `/_gateway/...` request (admin, auditor, console, health)."""
    if not _state["enabled"] or not log.isEnabledFor(logging.INFO):
        return
    log.info(
        "%s %s %d",
        method,
        path,
        status,
        extra={
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "client_ip": client_ip,
        },
    )
