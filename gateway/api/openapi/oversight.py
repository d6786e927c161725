"""Schemas of the kill switch, anomaly alerts, the auditors' endpoints and health."""

from __future__ import annotations

from typing import Any

from gateway.anomaly.config import DETECTORS, SEVERITIES
from gateway.anomaly.store import STATUSES
from gateway.api.openapi.blocks import object_schema as _object
from gateway.audit.export import FORMATS as EXPORT_FORMATS
from gateway.audit.exposure import MANIFEST_FORMATS
from gateway.audit.query import DECISIONS
from gateway.lockout.store import LOCK_KINDS

# --- kill switch, alerts, auditors ---------------------------------------------------------

_DETECTORS = list(DETECTORS)
_SEVERITIES = list(SEVERITIES)
_ALERT_STATUSES = list(STATUSES)
LOCK_REASON = {
    "type": "string",
    "minLength": 1,
    "maxLength": 4000,
    "pattern": r"\S",
    "x-invalid": "must not be blank: say why",
    "description": "why; kept with the lock and the admin event",
}
TTL = {
    "type": ["string", "null"],
    "maxLength": 32,
    "pattern": r"^\s*(\d+[smhdw]\s*)+$",
    "x-invalid": "must be a duration like 30m, 24h or 7d, or null",
    "description": "lift automatically after this long (30m, 24h, 7d; at most 3650d); "
    "null or absent: until lifted",
}
FILTER_TEXT = {"type": "string", "minLength": 1, "maxLength": 512}
TIME_PARAM = {
    "type": "string",
    "minLength": 1,
    "maxLength": 64,
    "description": "ISO 8601 time with a UTC offset, e.g. 2026-12-01T00:00:00Z",
}
LIMIT_1000 = {"type": "integer", "minimum": 1, "maximum": 1000}
ID_32 = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}

OVERSIGHT_REQUESTS: dict[str, dict[str, Any]] = dict(
    {
        "LockRequest": _object(
            {
                "kind": {"type": "string", "enum": list(LOCK_KINDS)},
                "target": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 512,
                    "description": "the vendor (acme), contractor (acme-idp:alice), issuer "
                    "name or project; one nobody has heard of is refused unless `force`",
                },
                "reason": LOCK_REASON,
                "ttl": TTL,
                "force": {"type": "boolean", "description": "lock a target not yet known"},
            },
            ["kind", "target", "reason"],
            description="Cut a vendor, contractor, issuer or project off, on every worker.",
        ),
        "LiftRequest": _object({"reason": LOCK_REASON}, ["reason"]),
        "ApproveRequest": _object({}, [], description="An empty JSON object."),
        "AlertUpdate": _object(
            {
                "status": {"type": "string", "enum": _ALERT_STATUSES},
                "assignee": {"type": ["string", "null"], "maxLength": 256},
                "notes": {"type": ["string", "null"], "maxLength": 20_000},
            },
            [],
            minProperties=1,
            description="Set an alert's status, assignee or notes (at least one).",
        ),
        "EscalateRequest": _object(
            {
                "reason": LOCK_REASON,
                "kind": {"type": "string", "enum": ["contractor", "vendor"]},
                "ttl": TTL,
            },
            ["reason"],
            description="Lock the alert's contractor (or vendor) now.",
        ),
    }
)

_EVENT_FILTERS = {
    "contractor": {**FILTER_TEXT, "description": "<issuer name>:<sub>"},
    "vendor": FILTER_TEXT,
    "issuer": FILTER_TEXT,
    "project": FILTER_TEXT,
    "task": FILTER_TEXT,
    "record": FILTER_TEXT,
    "decision": {"type": "string", "enum": list(DECISIONS)},
    "since": TIME_PARAM,
    "until": TIME_PARAM,
    "client_ip": FILTER_TEXT,
    "request_id": FILTER_TEXT,
}
_CURSOR = {"type": "string", "minLength": 1, "maxLength": 512, "description": "next_cursor"}
_WINDOW = {"since": TIME_PARAM, "until": TIME_PARAM}
_SCOPE = {"vendor": FILTER_TEXT, "contractor": FILTER_TEXT, "project": FILTER_TEXT}

OVERSIGHT_QUERIES: dict[str, dict[str, Any]] = dict(
    {
        "LockListQuery": _object(
            {"all": {"type": "boolean", "description": "also lifted and expired locks"}}, []
        ),
        "AlertListQuery": _object(
            {
                "status": {"type": "array", "items": {"type": "string", "enum": _ALERT_STATUSES}},
                "detector": {"type": "array", "items": {"type": "string", "enum": _DETECTORS}},
                "severity": {"type": "string", "enum": _SEVERITIES},
                "contractor": FILTER_TEXT,
                "vendor": FILTER_TEXT,
                "assignee": FILTER_TEXT,
                **_WINDOW,
                "limit": LIMIT_1000,
                "before": {**ID_32, "description": "next_before of the previous page"},
            },
            [],
        ),
        "EventQuery": _object({**_EVENT_FILTERS, "limit": LIMIT_1000, "cursor": _CURSOR}, []),
        "RecordQuery": _object({"limit": LIMIT_1000, "cursor": _CURSOR}, []),
        "ExposureQuery": _object(
            {**_SCOPE, **_WINDOW},
            [],
            description="one of vendor, contractor or project is required",
        ),
        "ManifestQuery": _object(
            {**_SCOPE, **_WINDOW, "format": {"type": "string", "enum": list(MANIFEST_FORMATS)}}, []
        ),
        "ExportQuery": _object(
            {
                "format": {"type": "string", "enum": list(EXPORT_FORMATS)},
                "vendor": FILTER_TEXT,
                "project": FILTER_TEXT,
                **_WINDOW,
            },
            [],
        ),
        "CheckpointQuery": _object({"since": TIME_PARAM}, []),
    }
)

_TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_OBJECT = {"type": "object"}
OVERSIGHT_RESPONSES: dict[str, dict[str, Any]] = dict(
    {
        "Lock": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "kind": {"type": "string", "enum": list(LOCK_KINDS)},
                "target": {"type": "string"},
                "reason": {"type": "string"},
                "actor": {"type": "string"},
                "created_at": {"type": "string", "format": "date-time"},
                "expires_at": _TIME_OR_NULL,
                "active": {"type": "boolean"},
                "lifted_at": _TIME_OR_NULL,
                "lifted_by": {"type": ["string", "null"]},
                "lift_reason": {"type": ["string", "null"]},
                "exposure": {
                    "type": ["object", "null"],
                    "description": "what the target received before the lock",
                },
                "state": {"type": "string", "enum": ["active", "expired", "lifted"]},
            },
            "required": ["id", "kind", "target", "reason", "actor", "created_at", "active"],
        },
        "LiftRequestState": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "lock_id": {"type": "integer"},
                "requested_by": {"type": "string"},
                "reason": {"type": "string"},
                "created_at": {"type": "string", "format": "date-time"},
                "expires_at": {"type": "string", "format": "date-time"},
                "approved_by": {"type": ["string", "null"]},
                "approved_at": _TIME_OR_NULL,
                "state": {"type": "string", "enum": ["pending", "approved", "expired"]},
            },
            "required": ["id", "lock_id", "requested_by", "reason", "expires_at", "state"],
        },
        "LiftPending": {
            "type": "object",
            "properties": {
                "lifted": {"const": False},
                "lift_request": {"$ref": "#/components/schemas/LiftRequestState"},
            },
            "required": ["lifted", "lift_request"],
        },
        "LiftRequestList": {
            "type": "object",
            "properties": {
                "lift_requests": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/LiftRequestState"},
                }
            },
            "required": ["lift_requests"],
        },
        "LockList": {
            "type": "object",
            "properties": {
                "locks": {"type": "array", "items": {"$ref": "#/components/schemas/Lock"}}
            },
            "required": ["locks"],
        },
        "Alert": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "detector": {"type": "string"},
                "severity": {"type": "string", "enum": _SEVERITIES},
                "status": {"type": "string", "enum": _ALERT_STATUSES},
                "contractor": {"type": ["string", "null"]},
                "vendor": {"type": ["string", "null"]},
                "project": {"type": ["string", "null"]},
                "window_start": _TIME_OR_NULL,
                "window_end": _TIME_OR_NULL,
                "detected_at": _TIME_OR_NULL,
                "score": {"type": "number"},
                "explanation": {"type": "string"},
                "evidence": _OBJECT,
                "assignee": {"type": ["string", "null"]},
                "notes": {"type": ["string", "null"]},
                "lock_id": {"type": ["integer", "null"]},
            },
            "required": ["id", "detector", "severity", "status", "evidence"],
        },
        "AlertList": {
            "type": "object",
            "properties": {
                "alerts": {"type": "array", "items": {"$ref": "#/components/schemas/Alert"}},
                "next_before": {"type": ["integer", "null"]},
            },
            "required": ["alerts", "next_before"],
        },
        "Escalation": {
            "type": "object",
            "properties": {
                "alert": {"$ref": "#/components/schemas/Alert"},
                "lock": {"$ref": "#/components/schemas/Lock"},
            },
            "required": ["alert", "lock"],
        },
        "EventPage": {
            "type": "object",
            "properties": {
                "events": {"type": "array", "items": _OBJECT},
                "next_cursor": {"type": ["string", "null"]},
            },
            "required": ["events", "next_cursor"],
        },
        "Provenance": {
            "type": "object",
            "properties": {
                "record_id": {"type": "string"},
                "summary": {"type": ["object", "null"]},
                "accesses": {"type": "array", "items": _OBJECT},
                "next_cursor": {"type": ["string", "null"]},
            },
            "required": ["record_id", "accesses", "next_cursor"],
        },
        "ExposureReport": {
            "type": "object",
            "properties": {
                "query": _OBJECT,
                "generated_at": {"type": "string"},
                "totals": _OBJECT,
                "projects": {"type": "array", "items": _OBJECT},
                "contractors": {"type": "array", "items": _OBJECT},
            },
            "required": ["query", "totals", "projects", "contractors"],
        },
        "Health": {
            "type": "object",
            "properties": {"status": {"type": "string", "enum": ["ok"]}},
            "required": ["status"],
        },
        "Readiness": {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["ready", "not_ready"]},
                "checks": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "required": ["status", "checks"],
        },
        "JWKS": {
            "type": "object",
            "properties": {"keys": {"type": "array", "items": _OBJECT}},
            "required": ["keys"],
        },
        "OpenAPI": {"type": "object", "required": ["openapi", "paths"]},
    }
)
