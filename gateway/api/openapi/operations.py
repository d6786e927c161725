"""Every operation of the gateway's own API (`/_gateway/...`): path, method, who may call
it, what it takes and what it answers. The OpenAPI document is built from this list, and
the views validate their input against the same schemas (`validate.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.api.openapi.oversight import ID_32
from gateway.api.openapi.schemas import VERSION

ADMIN_PREFIX = "/_gateway/admin"
AUDIT_PREFIX = "/_gateway/audit"
OPENAPI_PATH = "/_gateway/openapi.json"

CSV = "text/csv; charset=utf-8"
NDJSON = "application/x-ndjson"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TEXT = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # OpenAPI form: {version}
    operation_id: str
    summary: str
    tag: str
    ok: tuple[int, str]  # status and response schema (or a media type for downloads)
    role: str | None = "admin"  # None: no token needed
    body: str | None = None
    query: str | None = None
    path_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: tuple[int, ...] = ()  # further statuses besides 400/401/403 (and 409/413)
    downloads: tuple[str, ...] = ()  # media types of a file answer (ok[1] is ignored)


_CHANGE = (201, "ChangeResult")
_POLICY = ADMIN_PREFIX + "/policy"
_LOCKS = ADMIN_PREFIX + "/locks"
_ALERTS = AUDIT_PREFIX + "/alerts"
_LOCK_ID = {"lock_id": ID_32}
_ALERT_ID = {"alert_id": ID_32}

OPERATIONS: tuple[Operation, ...] = (
    # --- policy administration (admin) ---
    Operation("get", _POLICY, "listPolicy", "The rules in force, filtered", "policy",
              (200, "Policy"), query="ListPolicyQuery"),
    Operation("post", _POLICY + "/grants", "grant", "Grant a role or an action", "policy",
              _CHANGE, body="GrantRequest"),
    Operation("post", _POLICY + "/denies", "deny", "Add an explicit deny rule", "policy",
              _CHANGE, body="DenyRequest"),
    Operation("post", _POLICY + "/roles", "defineRole", "Define a role in a project",
              "policy", _CHANGE, body="RoleRequest"),
    Operation("post", _POLICY + "/revocations", "revoke", "Remove rules", "policy",
              (200, "ChangeResult"), body="RevokeRequest"),
    Operation("post", _POLICY + "/apply", "applyPolicy", "Replace the whole policy", "policy",
              _CHANGE, body="ApplyRequest"),
    Operation("post", _POLICY + "/rollback", "rollback", "Return to an old version",
              "policy", _CHANGE, body="RollbackRequest"),
    Operation("get", _POLICY + "/versions", "listVersions", "Policy versions, newest first",
              "policy", (200, "VersionList"), query="HistoryQuery"),
    Operation("get", _POLICY + "/versions/{version}", "getVersion", "One policy version",
              "policy", (200, "Version"), path_params={"version": VERSION}, extra=(404,)),
    Operation("get", _POLICY + "/diff", "diffVersions",
              "Rules added and removed between versions", "policy", (200, "Diff"),
              query="DiffQuery", extra=(404,)),
    Operation("get", _POLICY + "/explain", "explain", "A decision and the rules behind it",
              "policy", (200, "Explanation"), query="ExplainQuery"),
    # --- kill switch (admin) ---
    Operation("post", _LOCKS, "createLock", "Lock a vendor, contractor, issuer or project",
              "locks", (201, "Lock"), body="LockRequest", extra=(503,)),
    Operation("get", _LOCKS, "listLocks", "The locks in force (all=true: every lock)",
              "locks", (200, "LockList"), query="LockListQuery", extra=(503,)),
    Operation("get", _LOCKS + "/{lock_id}", "getLock", "One lock with its exposure",
              "locks", (200, "Lock"), path_params=_LOCK_ID, extra=(404, 503)),
    Operation("post", _LOCKS + "/{lock_id}/lift", "liftLock",
              "Lift a lock, with a reason (vendor and issuer locks: 202, a second admin"
              " approves)", "locks", (200, "Lock"), body="LiftRequest", path_params=_LOCK_ID,
              extra=(202, 404, 409, 503)),
    Operation("get", _LOCKS + "/lift-requests", "listLiftRequests",
              "Lift requests waiting for a second admin", "locks", (200, "LiftRequestList"),
              extra=(503,)),
    Operation("post", _LOCKS + "/lift-requests/{request_id}/approve", "approveLift",
              "Approve another admin's lift request: the lock is lifted", "locks",
              (200, "Lock"), body="ApproveRequest", path_params={"request_id": ID_32},
              extra=(404, 409, 503)),
    # --- anomaly alerts (auditor; escalation: admin) ---
    Operation("get", _ALERTS, "listAlerts", "Alerts, newest first", "alerts",
              (200, "AlertList"), role="auditor", query="AlertListQuery", extra=(503,)),
    Operation("get", _ALERTS + "/{alert_id}", "getAlert", "One alert with its evidence",
              "alerts", (200, "Alert"), role="auditor", path_params=_ALERT_ID,
              extra=(404, 503)),
    Operation("patch", _ALERTS + "/{alert_id}", "updateAlert",
              "Set an alert's status, assignee or notes", "alerts", (200, "Alert"),
              role="auditor", body="AlertUpdate", path_params=_ALERT_ID, extra=(404, 503)),
    Operation("post", _ALERTS + "/{alert_id}/escalate", "escalateAlert",
              "Lock the alert's contractor or vendor now", "alerts", (201, "Escalation"),
              body="EscalateRequest", path_params=_ALERT_ID, extra=(404, 503)),
    # --- the access log (auditor) ---
    Operation("get", AUDIT_PREFIX + "/events", "queryEvents",
              "Access-log events matching the filters, by time", "audit",
              (200, "EventPage"), role="auditor", query="EventQuery"),
    Operation("get", AUDIT_PREFIX + "/records/{record_id}", "recordProvenance",
              "Every access to one record", "audit", (200, "Provenance"), role="auditor",
              query="RecordQuery",
              path_params={"record_id": {"type": "string", "minLength": 1, "maxLength": 512}}),
    Operation("get", AUDIT_PREFIX + "/exposure", "exposureReport",
              "What a vendor's (contractor's, project's) people received in a window",
              "audit", (200, "ExposureReport"), role="auditor", query="ExposureQuery"),
    Operation("get", AUDIT_PREFIX + "/exposure/manifest", "exposureManifest",
              "The signed manifest of records received (signature in X-Manifest-Signature)",
              "audit", (200, ""), role="auditor", query="ManifestQuery",
              downloads=(CSV, "application/jsonl")),
    Operation("get", AUDIT_PREFIX + "/export", "exportAccessLog",
              "The access log as CSV, JSON lines or OCSF API Activity", "audit", (200, ""),
              role="auditor", query="ExportQuery", downloads=(CSV, NDJSON)),
    Operation("get", AUDIT_PREFIX + "/checkpoints", "exportCheckpoints",
              "Signed checkpoints of the hash-chain heads, as JSON lines", "audit", (200, ""),
              role="auditor", query="CheckpointQuery", downloads=(NDJSON,)),
    # --- public ---
    Operation("get", "/_gateway/health", "health", "Liveness", "health", (200, "Health"),
              role=None),
    Operation("get", "/_gateway/ready", "ready", "Readiness (503 when not ready)", "health",
              (200, "Readiness"), role=None, extra=(503,)),
    Operation("get", "/_gateway/jwks.json", "jwks", "The gateway's public signing keys",
              "health", (200, "JWKS"), role=None),
    Operation("get", OPENAPI_PATH, "openapi", "This document", "health", (200, "OpenAPI"),
              role=None),
    Operation("get", "/_gateway/metrics", "metrics",
              "Prometheus metrics (404 unless [metrics] token or networks is set)", "health",
              (200, ""), role="scraper", extra=(404,),
              downloads=(PROMETHEUS_TEXT, OPENMETRICS_TEXT)),
)  # fmt: skip

BY_ID = {operation.operation_id: operation for operation in OPERATIONS}
