"""The JSON Schemas of the gateway's API: request bodies, query strings and responses.

They are the single source for the OpenAPI document served at `/_gateway/openapi.json`
and for the validation of every request body and query string (`validate.py`).
`x-invalid` is an OpenAPI extension giving the message for a failed `pattern`.
"""

from __future__ import annotations

from typing import Any

from gateway.anomaly.config import DETECTORS, SEVERITIES
from gateway.anomaly.store import STATUSES
from gateway.audit.export import FORMATS as EXPORT_FORMATS
from gateway.audit.exposure import MANIFEST_FORMATS
from gateway.audit.query import DECISIONS
from gateway.lockout.store import LOCK_KINDS

# --- building blocks (patterns mirror gateway.policy.rules) ------------------------------

_NAME_CHARS = "letters, digits and . _ : @ + -, starting with a letter or digit"
NAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": 255,
    "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,254}$",
    "x-invalid": f"is not a valid name ({_NAME_CHARS})",
}
VENDOR = {
    "type": "string",
    "minLength": 1,
    "maxLength": 201,
    "pattern": r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,200}$",
    "x-invalid": "is not a valid vendor name (letters, digits and . _ @ + -)",
}
TASK = {
    "type": "string",
    "minLength": 1,
    "maxLength": 255,
    "pattern": r"^(\*|[A-Za-z0-9][A-Za-z0-9._:@+-]{0,253}\*?)$",
    "x-invalid": "is not a valid task pattern ('*', a task name, or a prefix ending in '*')",
    "default": "*",
}
INSTANT = {
    "type": "string",
    "format": "date-time",
    "maxLength": 64,
    "description": "ISO 8601 time with a UTC offset, e.g. 2026-12-01T00:00:00Z "
    "(stored to the second)",
}
REASON = {
    "type": "string",
    "minLength": 1,
    "maxLength": 2000,
    "pattern": r"\S",
    "x-invalid": "must not be blank",
    "description": "why the policy changes; kept with the version and the admin event",
}
VERSION = {"type": "integer", "minimum": 0, "maximum": 2_147_483_647}
BASE_VERSION = {
    **VERSION,
    "description": "the policy version this change was based on; a stale one gets 409",
}
DRY_RUN = {
    "type": "boolean",
    "default": False,
    "description": "validate and show the diff without committing",
}
RULE_LINE = {
    "type": "string",
    "minLength": 1,
    "maxLength": 1024,
    "pattern": r"^[^\r\n]+$",
    "x-invalid": "must be one rule on one line",
    "examples": ["p, acme-idp:alice, proj-3, *, read, allow"],
}
_ONE_SUBJECT = [{"required": ["subject"]}, {"required": ["vendor"]}]
_SUBJECT_PROPERTIES = {
    "subject": {**NAME, "description": "a contractor, <issuer name>:<sub> (acme-idp:alice)"},
    "vendor": {**VENDOR, "description": "a whole vendor (acme); becomes vendor:acme"},
}
_WRITE_PROPERTIES = {"reason": REASON, "base_version": BASE_VERSION, "dry_run": DRY_RUN}
NEW_PROJECT = {
    "type": "boolean",
    "description": "the project is new (not yet in the policy or the access log); without it"
    " a grant on an unknown project is refused as a likely typo, naming near matches",
}


def _object(properties: dict[str, Any], required: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
        **extra,
    }


# --- request bodies ----------------------------------------------------------------------

REQUESTS: dict[str, dict[str, Any]] = {
    "GrantRequest": _object(
        {
            **_SUBJECT_PROPERTIES,
            "project": NAME,
            "task": TASK,
            "role": {**NAME, "description": "a role defined in the project (annotator)"},
            "action": {**NAME, "description": "a single action (read)"},
            "from": {**INSTANT, "description": "the grant starts here; " + INSTANT["description"]},
            "until": {**INSTANT, "description": "the grant ends here; " + INSTANT["description"]},
            "new_project": NEW_PROJECT,
            **_WRITE_PROPERTIES,
        },
        ["project", "reason", "base_version"],
        allOf=[
            {"oneOf": _ONE_SUBJECT},
            {"oneOf": [{"required": ["role"]}, {"required": ["action"]}]},
        ],
        description="Give a contractor or a whole vendor a role or an action in a project, "
        "maybe narrowed to a task pattern and bounded in time.",
    ),
    "DenyRequest": _object(
        {
            **_SUBJECT_PROPERTIES,
            "project": NAME,
            "task": TASK,
            "action": NAME,
            "from": INSTANT,
            "until": INSTANT,
            "new_project": NEW_PROJECT,
            **_WRITE_PROPERTIES,
        },
        ["project", "action", "reason", "base_version"],
        allOf=[{"oneOf": _ONE_SUBJECT}],
        description="An explicit deny rule; deny overrides any allow.",
    ),
    "RoleRequest": _object(
        {
            "project": NAME,
            "role": NAME,
            "actions": {"type": "array", "items": NAME, "minItems": 1, "maxItems": 64},
            "new_project": NEW_PROJECT,
            **_WRITE_PROPERTIES,
        },
        ["project", "role", "actions", "reason", "base_version"],
        description="Define (or extend) a role in a project as a set of actions.",
    ),
    "RevokeRequest": _object(
        {
            "rules": {"type": "array", "items": RULE_LINE, "minItems": 1, "maxItems": 100_000},
            **_WRITE_PROPERTIES,
        },
        ["rules", "reason", "base_version"],
        description="Remove exactly these rules, as `GET /policy` prints them in `line`.",
    ),
    "ApplyRequest": _object(
        {
            "policy": {
                "type": "string",
                "maxLength": 32 * 1024 * 1024,
                "description": "the whole policy as Casbin CSV (p/g lines, optional "
                "FROM/UNTIL window as the last field)",
            },
            "confirm_removals": {
                "type": "boolean",
                "description": "required to remove more than [policy] max_removal_share of "
                "the rules in force (preview with dry_run first)",
            },
            "allow_empty": {
                "type": "boolean",
                "description": "required when the policy holds no rules at all",
            },
            **_WRITE_PROPERTIES,
        },
        ["policy", "reason", "base_version"],
        description="Make a reviewed policy set the whole policy, as one version.",
    ),
    "RollbackRequest": _object(
        {
            "version": {**VERSION, "minimum": 1, "description": "the version to return to"},
            "reason": REASON,
            "base_version": BASE_VERSION,
        },
        ["version", "reason", "base_version"],
        description="Create a new version equal to an old one.",
    ),
}

# Query strings, as objects of their parameters (integers arrive as decimal strings).
QUERIES: dict[str, dict[str, Any]] = {
    "ListPolicyQuery": _object(
        {"project": NAME, "subject": NAME, "vendor": VENDOR},
        [],
    ),
    "HistoryQuery": _object(
        {"limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}}, []
    ),
    "DiffQuery": _object({"from": VERSION, "to": VERSION}, ["from", "to"]),
    "ExplainQuery": _object(
        {
            "sub": {**NAME, "description": "the contractor, <issuer name>:<sub>"},
            "vendor": VENDOR,
            "project": NAME,
            "task": TASK,
            "action": NAME,
        },
        ["sub", "vendor", "project", "action"],
    ),
}

# --- responses ---------------------------------------------------------------------------

_NULLABLE_STRING = {"type": ["string", "null"]}
_LINES = {"type": "array", "items": {"type": "string"}}
RESPONSES: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "properties": {
            "error": {"type": "string"},
            "message": {"type": "string"},
            "fields": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "what is wrong, by request field (400 only)",
            },
            "current_version": {
                "type": "integer",
                "description": "the policy version now in force (409 only)",
            },
        },
        "required": ["error", "message"],
    },
    "Rule": {
        "type": "object",
        "properties": {
            "line": {"type": "string", "description": "the rule as CSV; use it to revoke"},
            "ptype": {"type": "string", "enum": ["p", "g"]},
            "subject": {"type": "string"},
            "project": {"type": "string"},
            "task": _NULLABLE_STRING,
            "action": _NULLABLE_STRING,
            "role": {**_NULLABLE_STRING, "description": "for 'g' rules: the role granted"},
            "effect": {"type": ["string", "null"], "enum": ["allow", "deny", None]},
            "not_before": {**_NULLABLE_STRING, "format": "date-time"},
            "not_after": {**_NULLABLE_STRING, "format": "date-time"},
        },
        "required": ["line", "ptype", "subject", "project"],
    },
    "Policy": {
        "type": "object",
        "properties": {
            "version": {"type": "integer"},
            "rules": {"type": "array", "items": {"$ref": "#/components/schemas/Rule"}},
        },
        "required": ["version", "rules"],
    },
    "ChangeResult": {
        "type": "object",
        "properties": {
            "version": {
                "type": ["integer", "null"],
                "description": "the new version; null for a dry run",
            },
            "added": _LINES,
            "removed": _LINES,
        },
        "required": ["version", "added", "removed"],
    },
    "Version": {
        "type": "object",
        "properties": {
            "version": {"type": "integer"},
            "created_at": {"type": "string", "format": "date-time"},
            "actor": {"type": "string"},
            "reason": {"type": "string"},
            "summary": {"type": "string"},
            "added": _LINES,
            "removed": _LINES,
        },
        "required": ["version", "created_at", "actor", "reason", "added", "removed"],
    },
    "VersionList": {
        "type": "object",
        "properties": {
            "versions": {"type": "array", "items": {"$ref": "#/components/schemas/Version"}}
        },
        "required": ["versions"],
    },
    "Diff": {
        "type": "object",
        "properties": {
            "from": {"type": "integer"},
            "to": {"type": "integer"},
            "added": _LINES,
            "removed": _LINES,
        },
        "required": ["from", "to", "added", "removed"],
    },
    "Explanation": {
        "type": "object",
        "properties": {
            "decision": {"type": "string", "enum": ["allow", "deny"]},
            "version": {"type": "integer"},
            "subjects": _LINES,
            "role_links": _LINES,
            "allow_rules": _LINES,
            "deny_rules": _LINES,
        },
        "required": ["decision", "version", "subjects", "role_links", "allow_rules", "deny_rules"],
    },
}


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

REQUESTS.update(
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

QUERIES.update(
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
RESPONSES.update(
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
