"""Streamed exports of the access log (CSV, JSON Lines, OCSF) on the audit blueprint.

- `GET /_gateway/audit/export?format=csv|jsonl|ocsf&vendor=&project=&since=&until=`
- `GET /_gateway/audit/checkpoints?since=`: the signed chain checkpoints as JSON Lines, for
  anchoring them off the box.

Auditor role only. Each export is recorded in admin_events (action `audit.export` /
`audit.checkpoints`) before the first byte goes out: auditors' reads are logged too.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
from flask import Response, current_app, request

from gateway.api.audit import audit_blueprint
from gateway.api.auth import AUDITOR, actor, error_response, require_role
from gateway.api.bodies import request_query
from gateway.audit.export import FORMATS, ExportError, ExportFilter, export_chunks, parse_time
from gateway.audit.seal import checkpoint_lines, iter_checkpoints
from gateway.policy.store import record_admin_event

_EXPORT_PARAMS = {"format", "vendor", "project", "since", "until"}


def _filters(params: dict[str, str]) -> ExportFilter:
    return ExportFilter(
        vendor=params.get("vendor") or None,
        project=params.get("project") or None,
        since=parse_time(params["since"], "since") if params.get("since") else None,
        until=parse_time(params["until"], "until") if params.get("until") else None,
    )


def _check_params(allowed: set[str]) -> dict[str, str]:
    unknown = sorted(set(request.args) - allowed)
    if unknown:
        # A misspelt filter must not silently widen an export to the whole log.
        raise ExportError(unknown[0], f"unknown parameter (expected {', '.join(sorted(allowed))})")
    for name in request.args:
        if len(request.args.getlist(name)) > 1:
            raise ExportError(name, "give it once")
    return request.args.to_dict()


def _log_read(action: str, target: dict[str, Any]) -> None:
    services = current_app.extensions["gateway"]
    with services.db.begin() as connection:
        record_admin_event(
            connection,
            actor=actor(),
            action=action,
            target=orjson.dumps(target).decode(),
            reason="auditor read",
        )


def _stream(chunks: Iterator[bytes], media_type: str, filename: str) -> Response:
    response = Response(chunks, content_type=media_type)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@audit_blueprint.get("/export")
@require_role(AUDITOR)
def export_access_log() -> Any:
    request_query("ExportQuery")
    try:
        params = _check_params(_EXPORT_PARAMS)
        fmt = params.get("format", "jsonl")
        if fmt not in FORMATS:
            raise ExportError("format", f"must be one of {', '.join(FORMATS)}")
        filters = _filters(params)
    except ExportError as error:
        return error_response(
            400, "invalid_request", str(error), fields={error.field: error.message}
        )
    _log_read("audit.export", {"format": fmt, **filters.as_json()})
    media_type, suffix = FORMATS[fmt]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    chunks = export_chunks(current_app.extensions["gateway"].db, fmt, filters)
    return _stream(chunks, media_type, f"access-log-{stamp}.{suffix}")


@audit_blueprint.get("/checkpoints")
@require_role(AUDITOR)
def export_checkpoints() -> Any:
    request_query("CheckpointQuery")
    try:
        params = _check_params({"since"})
        since = parse_time(params["since"], "since") if params.get("since") else None
    except ExportError as error:
        return error_response(
            400, "invalid_request", str(error), fields={error.field: error.message}
        )
    _log_read("audit.checkpoints", {"since": params.get("since")})
    engine = current_app.extensions["gateway"].db

    def lines() -> Iterator[bytes]:
        with engine.connect() as connection:
            yield from checkpoint_lines(iter_checkpoints(connection, since=since))

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return _stream(lines(), "application/x-ndjson", f"audit-checkpoints-{stamp}.jsonl")
