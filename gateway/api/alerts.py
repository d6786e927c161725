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
from flask import Blueprint, Response, current_app
from sqlalchemy.exc import SQLAlchemyError

from gateway.anomaly.store import (
    AlertError,
    AlertFilter,
    escalate_alert,
    get_alert,
    list_alerts,
    update_alert,
)
from gateway.api.auth import ADMIN, AUDITOR, actor, error_response, require_role
from gateway.api.bodies import (
    InvalidRequest,
    bad_request,
    request_body,
    request_query,
    use_json_bodies,
)
from gateway.lockout import LockError

log = logging.getLogger(__name__)

alerts_blueprint = Blueprint("alerts", __name__, url_prefix="/_gateway/audit/alerts")

MAX_BODY_BYTES = 64 * 1024
use_json_bodies(alerts_blueprint)
MAX_ALERT_ID = 2**31 - 1


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


def _list_query() -> tuple[AlertFilter, int, int | None]:
    """Checked against the document's AlertListQuery, then the times parsed."""
    values = request_query("AlertListQuery")
    fields: dict[str, str] = {}
    since = _time("since", values["since"], fields) if "since" in values else None
    until = _time("until", values["until"], fields) if "until" in values else None
    if since and until and since >= until:
        fields["until"] = "must be after since"
    if fields:
        raise InvalidRequest(fields)
    wanted = AlertFilter(
        status=values.get("status") or None,
        detector=values.get("detector") or None,
        severity=values.get("severity"),
        since=since,
        until=until,
        contractor=values.get("contractor"),
        vendor=values.get("vendor"),
        assignee=values.get("assignee"),
    )
    return wanted, values.get("limit", 100), values.get("before")


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
    data = request_body("AlertUpdate", MAX_BODY_BYTES)
    alert = update_alert(_db(), _alert_id(alert_id), actor=actor(), **data)
    return _json(alert)


@alerts_blueprint.post("/<int:alert_id>/escalate")
@require_role(ADMIN)
def escalate(alert_id: int) -> Any:
    from gateway.api.locks import parse_ttl

    data = request_body("EscalateRequest", MAX_BODY_BYTES)
    reason, kind = data["reason"], data.get("kind", "contractor")
    ttl = None
    if data.get("ttl") is not None:
        try:
            ttl = parse_ttl(data["ttl"])
        except LockError as error:
            raise InvalidRequest({"ttl": error.message}) from None
    services = current_app.extensions["gateway"]
    alert, lock = escalate_alert(
        _db(),
        _alert_id(alert_id),
        actor=actor(),
        reason=reason,
        kind=kind,
        ttl=ttl,
        exposure_days=services.config.lockout.exposure_days,
        config=services.config,
    )
    return _json({"alert": alert, "lock": lock}, status=201)
