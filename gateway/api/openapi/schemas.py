"""The JSON Schemas of the gateway's API: request bodies, query strings and responses.

They are the single source for the OpenAPI document served at `/_gateway/openapi.json`
and for the validation of every request body and query string (`validate.py`).
`x-invalid` is an OpenAPI extension giving the message for a failed `pattern`.
This module holds the building blocks and policy administration; `oversight.py` the kill
switch, alerts, the auditors' endpoints and health, merged in below.
"""

from __future__ import annotations

from typing import Any

from gateway.api.openapi.blocks import object_schema as _object

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


# The kill switch, alerts, auditors and health (their own module, for size).
from gateway.api.openapi.oversight import (  # noqa: E402
    OVERSIGHT_QUERIES,
    OVERSIGHT_REQUESTS,
    OVERSIGHT_RESPONSES,
)

REQUESTS.update(OVERSIGHT_REQUESTS)
QUERIES.update(OVERSIGHT_QUERIES)
RESPONSES.update(OVERSIGHT_RESPONSES)
