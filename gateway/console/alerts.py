"""The console's alert triage (auditors; escalation to a lock: admins): the same store as
`gateway anomalies` and /_gateway/audit/alerts."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, g, redirect, render_template, request, url_for

from gateway.anomaly.config import DETECTORS, SEVERITIES
from gateway.anomaly.store import (
    STATUSES,
    AlertError,
    AlertFilter,
    escalate_alert,
    get_alert,
    list_alerts,
    update_alert,
)
from gateway.console.login import require
from gateway.lockout import LockError

PAGE = 50


def _services() -> Any:
    return current_app.extensions["gateway"]


def register(blueprint: Blueprint) -> None:
    blueprint.add_url_rule("/alerts", "alerts", require("auditor")(alerts_page))
    # Admins see an alert to escalate it; triage is the auditors'.
    blueprint.add_url_rule(
        "/alerts/<int:alert_id>", "alert", require("auditor", "admin")(alert_page)
    )
    blueprint.add_url_rule(
        "/alerts/<int:alert_id>", "triage", require("auditor")(triage), methods=["POST"]
    )
    blueprint.add_url_rule(
        "/alerts/<int:alert_id>/escalate",
        "escalate",
        require("admin")(escalate),
        methods=["POST"],
    )


def alerts_page() -> Any:
    status = request.args.get("status", "open")
    severity = request.args.get("severity") or None
    detector = request.args.get("detector") or None
    before = request.args.get("before", "")
    wanted = AlertFilter(
        status=[status] if status in STATUSES else None,
        severity=severity if severity in SEVERITIES else None,
        detector=[detector] if detector in DETECTORS else None,
    )
    before_id = int(before) if before.isdigit() and 0 < int(before) < 2**31 else None
    alerts = list_alerts(_services().db, wanted, limit=PAGE, before_id=before_id)
    next_before = alerts[-1]["id"] if len(alerts) == PAGE else None
    return render_template(
        "alerts.html",
        alerts=alerts,
        status=status,
        severity=severity,
        detector=detector if detector in DETECTORS else None,
        statuses=STATUSES,
        severities=SEVERITIES,
        detectors=DETECTORS,
        next_before=next_before,
    )


def alert_page(alert_id: int, problem: str | None = None) -> Any:
    try:
        alert = get_alert(_services().db, alert_id) if alert_id < 2**31 else None
    except AlertError as error:
        return render_template("error.html", message=error.message), error.status
    if alert is None:
        return render_template("error.html", message=f"no alert {alert_id}"), 404
    return render_template("alert.html", alert=alert, statuses=STATUSES, problem=problem), (
        400 if problem else 200
    )


def triage(alert_id: int) -> Any:
    changes: dict[str, Any] = {}
    if request.form.get("status"):
        changes["status"] = request.form["status"]
    if "assignee" in request.form:
        changes["assignee"] = request.form["assignee"].strip() or None
    if "notes" in request.form:
        changes["notes"] = request.form["notes"]
    try:
        update_alert(_services().db, alert_id, actor=g.principal.policy_subject, **changes)
    except AlertError as error:
        if error.status == 404:
            return render_template("error.html", message=error.message), 404
        return alert_page(alert_id, problem=f"{error.field}: {error.message}")
    return redirect(url_for("console.alert", alert_id=alert_id), code=303)


def escalate(alert_id: int) -> Any:
    services = _services()
    kind = request.form.get("kind", "contractor")
    try:
        _alert, lock = escalate_alert(
            services.db,
            alert_id,
            actor=g.principal.policy_subject,
            reason=request.form.get("reason", ""),
            kind=kind if kind in ("contractor", "vendor") else "contractor",
            exposure_days=services.config.lockout.exposure_days,
            config=services.config,
        )
    except (AlertError, LockError) as error:
        return alert_page(alert_id, problem=f"{error.field}: {error.message}")
    return redirect(url_for("console.lock_page", lock_id=lock["id"]), code=303)
