"""Prometheus metrics of the gateway (docs/DESIGN.md, "Operations").

Every series name is defined here and nowhere else: the Grafana dashboard and the alert
rules in deploy/ are checked against what a running gateway exposes. Labels take values
from small, known sets (decisions, reasons, configured routes and issuers, pipeline
stages): never a contractor id or a record id, and vendor values (the IdP's to choose)
are capped per worker.

Under gunicorn the workers share counters through `PROMETHEUS_MULTIPROC_DIR`, which
gateway/gunicorn_conf.py sets (and empties) before any worker starts; that variable must
be set before `prometheus_client` is first imported for multiprocess mode to apply.
"""

from __future__ import annotations

import threading
import time

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ANOMALY_ALERTS",
    "ANOMALY_ROUND_FAILURES",
    "ANOMALY_ROUND_SECONDS",
    "AUDIT_BATCH_ROWS",
    "AUDIT_COMMIT_FAILURES",
    "AUDIT_QUEUE_DEPTH",
    "AUDIT_ROWS",
    "JWKS_REFRESHES",
    "LOCKS_ACTIVE",
    "LOCK_STATE_REFRESHED",
    "NOTIFICATIONS",
    "POLICY_CHANGED",
    "POLICY_VERSION",
    "RECORDS",
    "REQUESTS",
    "REQUEST_SECONDS",
    "STAGE_SECONDS",
    "UPSTREAM_ERRORS",
    "LabelLimit",
    "configure",
    "enabled",
    "reason_label",
]

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

REQUESTS = Counter(
    "gateway_requests",
    "Requests answered, by decision (allow/deny), reason, vendor and route template",
    ["decision", "reason", "vendor", "route"],
)
RECORDS = Counter(
    "gateway_records",
    "Records in upstream answers, by outcome: released to the client or withheld",
    ["outcome"],
)
REQUEST_SECONDS = Histogram(
    "gateway_request_duration_seconds",
    "Whole request, from the first byte handled to the answer ready",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)
STAGE_SECONDS = Histogram(
    "gateway_stage_duration_seconds",
    "Pipeline stages: identify, authorize, upstream, audit_commit",
    ["stage"],
    buckets=_LATENCY_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "gateway_upstream_errors",
    "Dataset service failures, by kind (unreachable, timeout, bad body, 5xx ...)",
    ["kind"],
)
AUDIT_BATCH_ROWS = Histogram(
    "gateway_audit_batch_rows",
    "Access rows per audit commit",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000),
)
AUDIT_ROWS = Counter("gateway_audit_rows", "Access rows committed")
AUDIT_QUEUE_DEPTH = Gauge(
    "gateway_audit_queue_depth",
    "Writes waiting for the audit writer, summed over live workers",
    multiprocess_mode="livesum",
)
AUDIT_COMMIT_FAILURES = Counter(
    "gateway_audit_commit_failures",
    "Audit commits that failed (the requests in them were refused: nothing released)",
)
LOCK_STATE_REFRESHED = Gauge(
    "gateway_lock_state_refreshed_timestamp_seconds",
    "When the lock state was last read from the database (oldest over live workers);"
    " its age is time() minus this",
    multiprocess_mode="livemin",
)
LOCKS_ACTIVE = Gauge(
    "gateway_locks_active",
    "Locks in force (vendor, contractor, issuer, project)",
    multiprocess_mode="livemax",
)
POLICY_VERSION = Gauge(
    "gateway_policy_version", "Policy version in force", multiprocess_mode="livemax"
)
POLICY_CHANGED = Gauge(
    "gateway_policy_changed_timestamp_seconds",
    "When a worker last brought a new policy version in force",
    multiprocess_mode="livemax",
)
JWKS_REFRESHES = Counter(
    "gateway_jwks_refreshes",
    "Key set fetches per issuer, by outcome (ok/failed)",
    ["issuer", "outcome"],
)

ANOMALY_ROUND_SECONDS = Histogram(
    "gateway_anomaly_round_duration_seconds",
    "One anomaly scan round (rollup, detectors, storing alerts)",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
ANOMALY_ROUND_FAILURES = Counter(
    "gateway_anomaly_round_failures", "Anomaly scan rounds that failed"
)
ANOMALY_ALERTS = Counter(
    "gateway_anomaly_alerts", "New anomaly alerts raised, by detector", ["detector"]
)

NOTIFICATIONS = Counter(
    "gateway_notifications",
    "Webhook deliveries by webhook and outcome (delivered, retried, failed, dropped)",
    ["webhook", "outcome"],
)

_state = {"enabled": True}


def configure(*, enabled: bool = True, vendor_label_limit: int | None = None) -> None:
    """Turn the request-path metrics on or off for this process (`[metrics] enabled`)."""
    _state["enabled"] = enabled
    if vendor_label_limit is not None:
        VENDORS.limit = vendor_label_limit


def enabled() -> bool:
    return _state["enabled"]


class LabelLimit:
    """At most `limit` distinct values of one label per process; the rest are "other"."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if not value:
            return "none"
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return "other"


VENDORS = LabelLimit(200)
_REASONS = LabelLimit(100)


def reason_label(reason: str | None) -> str:
    """`locked:17` → `locked`: a reason's kind, without the id some reasons carry."""
    if not reason:
        return "none"
    return _REASONS(reason.split(":", 1)[0])


def now() -> float:
    return time.perf_counter()
