"""Alerts and canary records in the database: upsert findings, list, update, escalate.

Every change an auditor or admin makes (status, assignee, notes, escalation, canaries)
is recorded in admin_events with who, why, before and after.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway import notify
from gateway.anomaly.config import DETECTORS, SEVERITIES
from gateway.anomaly.detectors import Finding
from gateway.anomaly.rollup import from_ts, utc
from gateway.db.models import AnomalyAlert, CanaryRecord
from gateway.lockout.store import notify_guards_changed
from gateway.policy.store import record_admin_event
from gateway.timestamps import rfc3339

STATUSES = ("open", "acknowledged", "resolved", "false_positive")
MAX_NOTES = 10_000
MAX_ASSIGNEE = 255
MAX_LIMIT = 1000
_ASSIGNEE = re.compile(r"^[^\x00-\x1f\x7f]{1,255}$")
_RECORD = re.compile(r"^[^\x00-\x1f\x7f]{1,255}$")


class AlertError(ValueError):
    """Refused input; `field` names what is wrong, `status` the HTTP status to answer."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


def _iso(value: datetime | None) -> str | None:
    return None if value is None else rfc3339(value)


def alert_as_dict(row: AnomalyAlert) -> dict[str, Any]:
    return {
        "id": row.id,
        "detector": row.detector,
        "severity": row.severity,
        "status": row.status,
        "contractor": row.contractor,
        "vendor": row.vendor,
        "project": row.project,
        "window_start": _iso(row.window_start),
        "window_end": _iso(row.window_end),
        "detected_at": _iso(row.detected_at),
        "score": round(row.score, 3),
        "explanation": row.explanation,
        "evidence": orjson.loads(row.evidence or "{}"),
        "assignee": row.assignee,
        "notes": row.notes,
        "lock_id": row.lock_id,
        "dedup_key": row.dedup_key,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "last_seen_at": _iso(row.last_seen_at),
    }


# --- findings -> alerts ------------------------------------------------------------------


@dataclass
class UpsertResult:
    new: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)
    # New alerts by detector (for the metrics and the notifications).
    new_by_detector: dict[str, int] = field(default_factory=dict)


def _values(finding: Finding) -> dict[str, Any]:
    who = finding.who
    return {
        "detector": finding.detector,
        "severity": finding.severity,
        "contractor": who.key[:512],
        "issuer": who.issuer,
        "subject": who.subject,
        "vendor": who.vendor,
        "client_ip": who.client_ip,
        "project": finding.project,
        "window_start": from_ts(finding.window_start),
        "window_end": from_ts(finding.window_end),
        "detected_at": from_ts(finding.detected_at),
        "score": float(finding.score),
        "explanation": finding.explanation,
        "evidence": orjson.dumps(finding.evidence).decode(),
    }


_COMPARED = ("severity", "window_start", "window_end", "score", "explanation", "evidence")


def upsert_findings(engine: Engine, findings: Iterable[Finding]) -> UpsertResult:
    """Store findings as alerts; a known dedup key updates its alert (never its status,
    assignee or notes), so a rescan adds nothing new."""
    result = UpsertResult()
    now = datetime.now(UTC)
    findings = list(findings)
    for start in range(0, len(findings), 500):
        chunk = findings[start : start + 500]
        with engine.begin() as connection:
            keys = [f.dedup_key for f in chunk]
            existing = {
                row.dedup_key: row
                for row in connection.execute(
                    select(AnomalyAlert).where(AnomalyAlert.dedup_key.in_(keys))
                )
            }
            for finding in chunk:
                values = _values(finding)
                row = existing.get(finding.dedup_key)
                if row is None:
                    try:
                        with connection.begin_nested():
                            alert_id = connection.execute(
                                insert(AnomalyAlert).values(
                                    dedup_key=finding.dedup_key,
                                    status="open",
                                    notes="",
                                    created_at=now,
                                    updated_at=now,
                                    last_seen_at=now,
                                    **values,
                                )
                            ).inserted_primary_key[0]
                        result.new.append(alert_id)
                        detector = finding.detector
                        result.new_by_detector[detector] = (
                            result.new_by_detector.get(detector, 0) + 1
                        )
                        continue
                    except IntegrityError:
                        # Another scan stored it a moment ago: treat it as known.
                        row = connection.execute(
                            select(AnomalyAlert).where(AnomalyAlert.dedup_key == finding.dedup_key)
                        ).one()
                changes = _changes(row, values)
                statement = update(AnomalyAlert).where(AnomalyAlert.id == row.id)
                if changes:
                    connection.execute(
                        statement.values(updated_at=now, last_seen_at=now, **changes)
                    )
                    result.updated.append(row.id)
                else:
                    connection.execute(statement.values(last_seen_at=now))
                    result.unchanged.append(row.id)
    if notify.active():
        for alert_id in result.new:
            notify.alert_raised(get_alert(engine, alert_id))
    return result


def _changes(row: Any, values: dict[str, Any]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for name in _COMPARED:
        old, new = getattr(row, name), values[name]
        if isinstance(old, datetime):
            same = abs((utc(old) - utc(new)).total_seconds()) < 1
        elif isinstance(old, float):
            same = abs(old - new) < 1e-6
        else:
            same = old == new
        if not same:
            changes[name] = new
    # The window only grows and the first detection time stays the first.
    if "window_start" in changes:
        changes["window_start"] = min(utc(row.window_start), utc(values["window_start"]))
    if "window_end" in changes:
        changes["window_end"] = max(utc(row.window_end), utc(values["window_end"]))
    if utc(values["detected_at"]) < utc(row.detected_at):
        changes["detected_at"] = values["detected_at"]
    return changes


# --- reading -----------------------------------------------------------------------------


@dataclass
class AlertFilter:
    status: list[str] | None = None
    detector: list[str] | None = None
    severity: str | None = None  # at least this severe
    contractor: str | None = None
    vendor: str | None = None
    assignee: str | None = None
    since: datetime | None = None  # detected at or after
    until: datetime | None = None  # detected before

    def as_dict(self) -> dict[str, Any]:
        return {
            key: (_iso(value) if isinstance(value, datetime) else value)
            for key, value in self.__dict__.items()
            if value is not None
        }


def list_alerts(
    engine: Engine,
    wanted: AlertFilter | None = None,
    *,
    limit: int = 100,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    """Newest first (by id); `before_id` pages back."""
    wanted = wanted or AlertFilter()
    query = select(AnomalyAlert)
    conditions = []
    if wanted.status:
        conditions.append(AnomalyAlert.status.in_(wanted.status))
    if wanted.detector:
        conditions.append(AnomalyAlert.detector.in_(wanted.detector))
    if wanted.severity:
        conditions.append(
            AnomalyAlert.severity.in_(SEVERITIES[SEVERITIES.index(wanted.severity) :])
        )
    if wanted.contractor:
        conditions.append(AnomalyAlert.contractor == wanted.contractor)
    if wanted.vendor:
        conditions.append(AnomalyAlert.vendor == wanted.vendor)
    if wanted.assignee:
        conditions.append(AnomalyAlert.assignee == wanted.assignee)
    if wanted.since:
        conditions.append(AnomalyAlert.detected_at >= wanted.since)
    if wanted.until:
        conditions.append(AnomalyAlert.detected_at < wanted.until)
    if before_id is not None:
        conditions.append(AnomalyAlert.id < before_id)
    query = query.where(*conditions).order_by(AnomalyAlert.id.desc()).limit(limit)
    with engine.connect() as connection:
        return [alert_as_dict(row) for row in connection.execute(query)]


def get_alert(engine: Engine, alert_id: int) -> dict[str, Any]:
    with engine.connect() as connection:
        row = connection.execute(select(AnomalyAlert).where(AnomalyAlert.id == alert_id)).first()
    if row is None:
        raise AlertError("alert_id", f"no alert {alert_id}", status=404)
    return alert_as_dict(row)


# --- auditor changes ---------------------------------------------------------------------

_UNSET: Any = object()


def validate_update(
    status: Any = _UNSET, assignee: Any = _UNSET, notes: Any = _UNSET
) -> dict[str, Any]:
    """The fields to change, or AlertError naming the first bad one."""
    changes: dict[str, Any] = {}
    if status is not _UNSET:
        if not isinstance(status, str) or status not in STATUSES:
            raise AlertError("status", f"must be one of {', '.join(STATUSES)}")
        changes["status"] = status
    if assignee is not _UNSET:
        if assignee is not None and (
            not isinstance(assignee, str) or not _ASSIGNEE.match(assignee.strip() or "\x00")
        ):
            raise AlertError(
                "assignee", f"must be null or a name of 1..{MAX_ASSIGNEE} printable characters"
            )
        changes["assignee"] = assignee.strip() if isinstance(assignee, str) else None
    if notes is not _UNSET:
        if not isinstance(notes, str):
            raise AlertError("notes", "must be a string")
        if len(notes) > MAX_NOTES:
            raise AlertError("notes", f"must be at most {MAX_NOTES} characters")
        changes["notes"] = notes
    if not changes:
        raise AlertError("body", "give at least one of status, assignee, notes")
    return changes


def update_alert(
    engine: Engine,
    alert_id: int,
    *,
    actor: str,
    status: Any = _UNSET,
    assignee: Any = _UNSET,
    notes: Any = _UNSET,
) -> dict[str, Any]:
    changes = validate_update(status, assignee, notes)
    now = datetime.now(UTC)
    with engine.begin() as connection:
        row = connection.execute(select(AnomalyAlert).where(AnomalyAlert.id == alert_id)).first()
        if row is None:
            raise AlertError("alert_id", f"no alert {alert_id}", status=404)
        before = {name: getattr(row, name) for name in changes}
        statement = update(AnomalyAlert).where(AnomalyAlert.id == alert_id)
        connection.execute(statement.values(updated_at=now, **changes))
        record_admin_event(
            connection,
            actor=actor,
            action="alert.update",
            target=f"alert:{alert_id}",
            reason=f"{row.detector} on {row.contractor}",
            before=before,
            after=changes,
            time=now,
        )
    return get_alert(engine, alert_id)


def escalate_alert(
    engine: Engine,
    alert_id: int,
    *,
    actor: str,
    reason: str,
    kind: str = "contractor",
    ttl: timedelta | None = None,
    exposure_days: int = 30,
    config: Any = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Lock the alert's contractor (or their whole vendor) in one step; (alert, lock).

    With the gateway `config`, a lock that could never match under it (an issuer no
    longer configured, say) is refused like the lock API refuses it."""
    from gateway.lockout import create_lock
    from gateway.lockout.store import check_target, get_lock

    if not isinstance(reason, str) or not reason.strip():
        raise AlertError("reason", "a reason is required")
    if kind not in ("contractor", "vendor"):
        raise AlertError("kind", "must be contractor or vendor")
    alert = get_alert(engine, alert_id)
    if alert["lock_id"] is not None:
        lock = get_lock(engine, alert["lock_id"])
        if lock["active"]:
            raise AlertError(
                "alert_id", f"alert {alert_id} is already escalated to lock {lock['id']}", 409
            )
    with engine.connect() as connection:
        row = connection.execute(select(AnomalyAlert).where(AnomalyAlert.id == alert_id)).one()
    if kind == "contractor":
        if row.subject is None or row.issuer is None:
            what = (
                "a vendor: lock the vendor (kind vendor)"
                if row.contractor.startswith("vendor:")
                else "an address, not a contractor: no lock can name it"
            )
            raise AlertError("kind", f"{row.contractor} is {what}", 409)
        target = f"{row.issuer}:{row.subject}"
    else:
        if row.vendor is None:
            raise AlertError("kind", "the alert names no vendor", 409)
        target = row.vendor
    if config is not None:
        problem = check_target(config, kind, target)
        if problem:
            raise AlertError("kind", f"cannot lock {kind} {target}: {problem}", 409)
    lock = create_lock(
        engine,
        kind=kind,
        target=target,
        reason=f"alert {alert_id} ({row.detector}): {reason.strip()}",
        actor=actor,
        ttl=ttl,
        exposure_days=exposure_days,
    )
    now = datetime.now(UTC)
    with engine.begin() as connection:
        values: dict[str, Any] = {"lock_id": lock["id"], "updated_at": now}
        if row.status == "open":
            values["status"] = "acknowledged"
        connection.execute(update(AnomalyAlert).where(AnomalyAlert.id == alert_id).values(**values))
        record_admin_event(
            connection,
            actor=actor,
            action="alert.escalate",
            target=f"alert:{alert_id}",
            reason=reason.strip(),
            before={"status": row.status, "lock_id": row.lock_id},
            after={"status": values.get("status", row.status), "lock_id": lock["id"]},
            time=now,
        )
    return get_alert(engine, alert_id), lock


# --- canary records ----------------------------------------------------------------------


def add_canary(
    engine: Engine,
    record_id: str,
    *,
    reason: str,
    actor: str,
    project: str | None = None,
    created_at: datetime | None = None,
) -> dict[str, Any]:
    if not isinstance(record_id, str) or not _RECORD.match(record_id):
        raise AlertError("record_id", "must be 1..255 printable characters")
    if not isinstance(reason, str) or not reason.strip():
        raise AlertError("reason", "a reason is required")
    now = created_at or datetime.now(UTC)
    try:
        with engine.begin() as connection:
            connection.execute(
                insert(CanaryRecord).values(
                    record_id=record_id,
                    project=project,
                    reason=reason.strip(),
                    actor=actor,
                    created_at=now,
                )
            )
            record_admin_event(
                connection,
                actor=actor,
                action="canary.add",
                target=f"record:{record_id}",
                reason=reason.strip(),
                after={"record_id": record_id, "project": project},
                time=now,
            )
            notify_guards_changed(connection)
    except IntegrityError:
        raise AlertError("record_id", f"{record_id} is already a canary record", 409) from None
    return {"record_id": record_id, "project": project, "reason": reason.strip(), "actor": actor}


def add_canaries(
    engine: Engine, record_ids: Sequence[str], *, reason: str, actor: str, created_at: datetime
) -> int:
    """Many canaries at once (the simulator's output); existing ones are kept."""
    with engine.begin() as connection:
        known = set(connection.execute(select(CanaryRecord.record_id)).scalars())
        fresh = [r for r in dict.fromkeys(record_ids) if r not in known]
        if fresh:
            connection.execute(
                insert(CanaryRecord),
                [
                    {
                        "record_id": r,
                        "project": None,
                        "reason": reason,
                        "actor": actor,
                        "created_at": created_at,
                    }
                    for r in fresh
                ],
            )
    return len(fresh)


def list_canaries(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(select(CanaryRecord).order_by(CanaryRecord.record_id)).all()
    return [
        {
            "record_id": r.record_id,
            "project": r.project,
            "reason": r.reason,
            "actor": r.actor,
            "created_at": _iso(r.created_at),
        }
        for r in rows
    ]


def remove_canary(engine: Engine, record_id: str, *, reason: str, actor: str) -> None:
    if not isinstance(reason, str) or not reason.strip():
        raise AlertError("reason", "a reason is required")
    with engine.begin() as connection:
        row = connection.execute(
            select(CanaryRecord).where(CanaryRecord.record_id == record_id)
        ).first()
        if row is None:
            raise AlertError("record_id", f"{record_id} is not a canary record", 404)
        connection.execute(CanaryRecord.__table__.delete().where(CanaryRecord.id == row.id))
        record_admin_event(
            connection,
            actor=actor,
            action="canary.remove",
            target=f"record:{record_id}",
            reason=reason.strip(),
            before={"record_id": record_id, "project": row.project, "reason": row.reason},
        )
        notify_guards_changed(connection)


def check_detectors(names: Iterable[str]) -> list[str]:
    names = list(names)
    for name in names:
        if name not in DETECTORS:
            known = ", ".join(DETECTORS)
            raise AlertError("detector", f"unknown detector {name!r} (known: {known})")
    return names
