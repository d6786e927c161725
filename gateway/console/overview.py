"""The overview's figures: the last day per vendor, locks, open alerts, policy, readiness.

Read from the same tables the CLI and API read (access_log, locks, anomaly_alerts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import distinct, func, select
from sqlalchemy.engine import Engine

from gateway.anomaly.config import SEVERITIES
from gateway.db.models import AccessEvent, AnomalyAlert
from gateway.lockout import list_locks


@dataclass
class VendorDay:
    vendor: str
    requests: int = 0
    released: int = 0  # record rows allowed (and requests without records allowed)
    withheld: int = 0  # records filtered out of an answer
    denied: int = 0  # rows of refused requests

    @property
    def total(self) -> int:
        return self.released + self.withheld + self.denied


@dataclass
class Overview:
    since: datetime
    vendors: list[VendorDay] = field(default_factory=list)
    active_locks: list[dict[str, Any]] = field(default_factory=list)
    open_alerts: dict[str, int] = field(default_factory=dict)
    policy_version: int = 0

    @property
    def busiest(self) -> int:
        return max((vendor.total for vendor in self.vendors), default=0)


def overview(engine: Engine, policy_version: int, *, hours: int = 24) -> Overview:
    since = datetime.now(UTC) - timedelta(hours=hours)
    result = Overview(since=since, policy_version=policy_version)
    by_vendor: dict[str, VendorDay] = {}
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                AccessEvent.vendor,
                AccessEvent.decision,
                func.count(),
                func.count(distinct(AccessEvent.request_id)),
            )
            .where(AccessEvent.time >= since)
            .group_by(AccessEvent.vendor, AccessEvent.decision)
        ).all()
        alerts = connection.execute(
            select(AnomalyAlert.severity, func.count())
            .where(AnomalyAlert.status == "open")
            .group_by(AnomalyAlert.severity)
        ).all()
    for vendor, decision, rows_count, requests in rows:
        day = by_vendor.setdefault(vendor or "-", VendorDay(vendor or "-"))
        day.requests += requests
        if decision == "allow":
            day.released += rows_count
        elif decision == "filtered":
            day.withheld += rows_count
        else:
            day.denied += rows_count
    result.vendors = sorted(by_vendor.values(), key=lambda day: (-day.total, day.vendor))
    counts = dict(alerts)
    result.open_alerts = {severity: counts.get(severity, 0) for severity in SEVERITIES}
    result.active_locks = list_locks(engine)
    return result
