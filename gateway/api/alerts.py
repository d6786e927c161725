"""Anomaly alerts API under /_gateway/audit/alerts: thin views over gateway.anomaly.store.

    GET   /_gateway/audit/alerts?status=&detector=&severity=&contractor=&vendor=&assignee=
          &since=&until=&limit=&before=          alerts, newest first (auditor)
    GET   /_gateway/audit/alerts/<id>            one alert with its evidence (auditor)
    PATCH /_gateway/audit/alerts/<id>            {"status", "assignee", "notes"} (auditor)
    POST  /_gateway/audit/alerts/<id>/escalate   {"reason", "kind", "ttl"}: lock the alert's
                                                 contractor or vendor now (admin)

`status` and `detector` may be repeated; `severity` means at least that severe; `since`
and `until` bound the detection time (ISO 8601 with an offset); `before` pages back by
alert id (the response's `next_before`). Bad input is a 400 `invalid_request` whose
`fields` name what is wrong; an unknown alert is a 404, escalating an alert whose lock is
still active (or one that names only an address) a 409. Every change is recorded in
admin_events.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, request
from sqlalchemy.exc import SQLAlchemyError

from gateway.anomaly.config import DETECTORS, SEVERITIES
from gateway.anomaly.store import (
    MAX_LIMIT,
    STATUSES,
    AlertError,
    AlertFilter,
    escalate_alert,
    get_alert,
    list_alerts,
    update_alert,
)
from gateway.api.auth import ADMIN, AUDITOR, actor, error_response, require_role
from gateway.api.bodies import InvalidRequest, bad_request, json_object, use_json_bodies
from gateway.lockout import LockError

log = logging.getLogger(__name__)

alerts_blueprint = Blueprint("alerts", __name__, url_prefix="/_gateway/audit/alerts")

MAX_BODY_BYTES = 64 * 1024
use_json_bodies(alerts_blueprint)
MAX_ALERT_ID = 2**31 - 1
_LIST_PARAMS = (
    "status",
    "detector",
    "severity",
    "contractor",
    "vendor",
    "assignee",
    "since",
    "until",
    "limit",
    "before",
)


@alerts_blueprint.errorhandler(AlertError)
def _refused(error: AlertError) -> Any:
    if error.status == 404:
        return error_response(404, "not_found", error.message)
    if error.status == 409:
        return error_response(409, "conflict", error.message)
    return bad_request({error.field: error.message})


@alerts_blueprint.errorhandler(LockError)
def _lock_refused(error: LockError) -> Any:
    return bad_request({error.field: error.message})


@alerts_blueprint.errorhandler(SQLAlchemyError)
def _database(error: SQLAlchemyError) -> Any:
    log.error("alert store unavailable: %s", error)
    return error_response(503, "database_unavailable", "the alert store cannot be reached")


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status=status, mimetype="application/json")


def _db() -> Any:
    return current_app.extensions["gateway"].db


def _record_read(filters: dict[str, Any], count: int) -> None:
    from gateway.policy.store import record_admin_event

    with _db().begin() as connection:
        record_admin_event(
            connection,
            actor=actor(),
            action="alerts.query",
            target="anomaly_alerts",
            reason="",
            after={"filters": filters, "alerts": count},
        )


# --- input --------------------------------------------------------------------------------


def _time(name: str, text: str, fields: dict[str, str]) -> datetime | None:
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        fields[name] = "must be an ISO 8601 time, e.g. 2026-01-05T00:00:00Z"
        return None
    if value.tzinfo is None:
        fields[name] = "needs a UTC offset, e.g. 2026-01-05T00:00:00Z"
        return None
    return value.astimezone(UTC)


def _int(name: str, text: str, low: int, high: int, fields: dict[str, str]) -> int | None:
    stripped = text.strip()
    if not stripped.isascii() or not stripped.isdigit() or not low <= int(stripped) <= high:
        fields[name] = f"must be a whole number from {low} to {high}"
        return None
    return int(stripped)


def _list_query() -> tuple[AlertFilter, int, int | None]:
    args = request.args
    fields: dict[str, str] = {}
    for name in args:
        if name not in _LIST_PARAMS:
            fields[name[:100]] = f"unknown parameter (expected one of: {', '.join(_LIST_PARAMS)})"
    for name in _LIST_PARAMS:
        if name not in ("status", "detector") and len(args.getlist(name)) > 1:
            fields[name] = "give it once"
    statuses = args.getlist("status")
    for status in statuses:
        if status not in STATUSES:
            fields["status"] = f"must be one of {', '.join(STATUSES)}"
    detectors = args.getlist("detector")
    for detector in detectors:
        if detector not in DETECTORS:
            fields["detector"] = f"must be one of {', '.join(DETECTORS)}"
    severity = args.get("severity")
    if severity is not None and severity not in SEVERITIES:
        fields["severity"] = f"must be one of {', '.join(SEVERITIES)}"
    text_filters = {}
    for name in ("contractor", "vendor", "assignee"):
        value = args.get(name)
        if value is not None and (not value.strip() or len(value) > 512):
            fields[name] = "must be 1..512 characters"
        text_filters[name] = value
    since = _time("since", args["since"], fields) if "since" in args else None
    until = _time("until", args["until"], fields) if "until" in args else None
    if since and until and since >= until:
        fields["until"] = "must be after since"
    limit = _int("limit", args["limit"], 1, MAX_LIMIT, fields) if "limit" in args else 100
    before = _int("before", args["before"], 1, MAX_ALERT_ID, fields) if "before" in args else None
    if fields:
        raise InvalidRequest(fields)
    wanted = AlertFilter(
        status=statuses or None,
        detector=detectors or None,
        severity=severity,
        since=since,
        until=until,
        **text_filters,
    )
    return wanted, limit or 100, before


def _alert_id(alert_id: int) -> int:
    if alert_id < 1 or alert_id > MAX_ALERT_ID:
        raise AlertError("alert_id", f"no alert {alert_id}", status=404)
    return alert_id


# --- views --------------------------------------------------------------------------------


@alerts_blueprint.get("")
@require_role(AUDITOR)
def index() -> Any:
    wanted, limit, before = _list_query()
    alerts = list_alerts(_db(), wanted, limit=limit, before_id=before)
    _record_read({**wanted.as_dict(), "limit": limit, "before": before}, len(alerts))
    next_before = alerts[-1]["id"] if len(alerts) == limit else None
    return _json({"alerts": alerts, "next_before": next_before})


@alerts_blueprint.get("/<int:alert_id>")
@require_role(AUDITOR)
def show(alert_id: int) -> Any:
    return _json(get_alert(_db(), _alert_id(alert_id)))


@alerts_blueprint.patch("/<int:alert_id>")
@require_role(AUDITOR)
def patch(alert_id: int) -> Any:
    data = json_object(MAX_BODY_BYTES, ("status", "assignee", "notes"))
    if not data:
        raise InvalidRequest({"body": "give at least one of status, assignee, notes"})
    alert = update_alert(_db(), _alert_id(alert_id), actor=actor(), **data)
    return _json(alert)


@alerts_blueprint.post("/<int:alert_id>/escalate")
@require_role(ADMIN)
def escalate(alert_id: int) -> Any:
    from gateway.api.locks import parse_ttl

    data = json_object(MAX_BODY_BYTES, ("reason", "kind", "ttl"))
    fields: dict[str, str] = {}
    reason = data.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        fields["reason"] = "is required: say why"
    elif len(reason) > 4000:
        fields["reason"] = "must be at most 4000 characters"
    kind = data.get("kind", "contractor")
    if kind not in ("contractor", "vendor"):
        fields["kind"] = "must be contractor or vendor"
    ttl = None
    if data.get("ttl") is not None:
        if not isinstance(data["ttl"], str):
            fields["ttl"] = "must be a duration like 30m, 24h or 7d, or null"
        else:
            try:
                ttl = parse_ttl(data["ttl"])
            except LockError as error:
                fields["ttl"] = error.message
    if fields:
        raise InvalidRequest(fields)
    services = current_app.extensions["gateway"]
    alert, lock = escalate_alert(
        _db(),
        _alert_id(alert_id),
        actor=actor(),
        reason=reason,  # type: ignore[arg-type]
        kind=kind,
        ttl=ttl,
        exposure_days=services.config.lockout.exposure_days,
        config=services.config,
    )
    return _json({"alert": alert, "lock": lock}, status=201)
