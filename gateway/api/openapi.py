"""The admin API's contract: request schemas, a small validator, and the OpenAPI document.

The JSON Schemas here are the single source for both the OpenAPI document served at
`/_gateway/openapi.json` and the validation of request bodies and query strings in
`gateway.api.admin`. The validator implements only the subset of JSON Schema used below:
type, required, properties, additionalProperties (false), enum, minLength, maxLength,
pattern, minimum, maximum, items, minItems, maxItems, oneOf (of `required` alternatives).
`x-invalid` is an OpenAPI extension giving the message for a failed `pattern`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

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


# --- the operations ------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # OpenAPI form: {version}
    operation_id: str
    summary: str
    ok: tuple[int, str]  # status and response schema
    body: str | None = None
    query: str | None = None
    path_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: tuple[int, ...] = ()  # further statuses (404) besides 400/401/403


ADMIN_PREFIX = "/_gateway/admin"
OPENAPI_PATH = "/_gateway/openapi.json"
_CHANGE = (201, "ChangeResult")

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get",
        "/policy",
        "listPolicy",
        "The rules in force, filtered",
        (200, "Policy"),
        query="ListPolicyQuery",
    ),
    Operation(
        "post", "/policy/grants", "grant", "Grant a role or an action", _CHANGE, body="GrantRequest"
    ),
    Operation(
        "post", "/policy/denies", "deny", "Add an explicit deny rule", _CHANGE, body="DenyRequest"
    ),
    Operation(
        "post",
        "/policy/roles",
        "defineRole",
        "Define a role in a project",
        _CHANGE,
        body="RoleRequest",
    ),
    Operation(
        "post",
        "/policy/revocations",
        "revoke",
        "Remove rules",
        (200, "ChangeResult"),
        body="RevokeRequest",
    ),
    Operation(
        "post",
        "/policy/apply",
        "applyPolicy",
        "Replace the whole policy",
        _CHANGE,
        body="ApplyRequest",
    ),
    Operation(
        "post",
        "/policy/rollback",
        "rollback",
        "Return to an old version",
        _CHANGE,
        body="RollbackRequest",
    ),
    Operation(
        "get",
        "/policy/versions",
        "listVersions",
        "Policy versions, newest first",
        (200, "VersionList"),
        query="HistoryQuery",
    ),
    Operation(
        "get",
        "/policy/versions/{version}",
        "getVersion",
        "One policy version",
        (200, "Version"),
        path_params={"version": VERSION},
        extra=(404,),
    ),
    Operation(
        "get",
        "/policy/diff",
        "diffVersions",
        "Rules added and removed between versions",
        (200, "Diff"),
        query="DiffQuery",
        extra=(404,),
    ),
    Operation(
        "get",
        "/policy/explain",
        "explain",
        "A decision and the rules behind it",
        (200, "Explanation"),
        query="ExplainQuery",
    ),
)

_STATUS_TEXT = {
    200: "OK",
    201: "Created: a new policy version",
    400: "Invalid request; `fields` names what is wrong",
    401: "No or invalid bearer token",
    403: "The caller lacks the admin role",
    404: "No such policy version",
    409: "Stale base_version; `current_version` says what to rebase on",
    413: "Request body too large",
}


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document for the admin API (built once per process)."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        responses: dict[str, Any] = {
            str(op.ok[0]): {
                "description": _STATUS_TEXT[op.ok[0]],
                "content": _json_content(op.ok[1]),
            }
        }
        if op.body is not None and op.ok[0] == 201:
            responses["200"] = {
                "description": "Dry run: the diff, nothing committed",
                "content": _json_content("ChangeResult"),
            }
        statuses = [400, 401, 403, *op.extra]
        if op.body is not None:
            statuses += [409, 413]
        for status in sorted(statuses):
            responses[str(status)] = {"$ref": f"#/components/responses/E{status}"}
        operation: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": ["policy"],
            "responses": responses,
        }
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": schema}
            for name, schema in op.path_params.items()
        ]
        if op.query is not None:
            query = QUERIES[op.query]
            parameters += [
                {
                    "name": name,
                    "in": "query",
                    "required": name in query["required"],
                    "schema": schema,
                }
                for name, schema in query["properties"].items()
            ]
        if parameters:
            operation["parameters"] = parameters
        if op.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": _json_content(op.body),
            }
        paths.setdefault(ADMIN_PREFIX + op.path, {})[op.method] = operation
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "Contractor access-governance gateway: admin API",
            "version": "1",
            "description": "Grants, denies, roles, revocations, whole-policy apply, "
            "rollback, versions and explain. Every write names the version it was based "
            "on (`base_version`) and is refused with 409 if that is no longer current.",
        },
        "security": [{"bearer": []}],
        "tags": [{"name": "policy", "description": "Casbin policy administration"}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An access token of a roles-trusted issuer carrying "
                    "the 'admin' role",
                }
            },
            "schemas": {**REQUESTS, **RESPONSES},
            "responses": {
                f"E{status}": {
                    "description": _STATUS_TEXT[status],
                    "content": _json_content("Error"),
                }
                for status in (400, 401, 403, 404, 409, 413)
            },
        },
    }


def _json_content(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}


# --- validation ------------------------------------------------------------------------

MAX_ERRORS = 20
_MAX_FIELD_NAME = 64
_INTEGER = re.compile(r"^-?[0-9]{1,12}$")


def validate(instance: Any, schema: Mapping[str, Any]) -> dict[str, str]:
    """Field → message for everything wrong with `instance` (empty when it is valid)."""
    errors: dict[str, str] = {}
    _check(instance, schema, "", errors)
    return errors


def parse_query(args: Mapping[str, list[str]], schema: Mapping[str, Any]) -> tuple[dict, dict]:
    """Query parameters (name → all its values) → (values, errors) under an object schema.

    Each parameter may appear once; integer parameters are converted from decimal text.
    """
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    properties = schema.get("properties", {})
    for name, given in args.items():
        if len(given) != 1:
            errors[_field(name)] = "must be given once"
            continue
        text = given[0]
        if properties.get(name, {}).get("type") == "integer":
            if not _INTEGER.match(text):
                errors[_field(name)] = "must be an integer"
                continue
            values[name] = int(text)
        else:
            values[name] = text
    if errors:
        return values, errors
    return values, validate(values, schema)


def _field(path: str) -> str:
    return path if len(path) <= _MAX_FIELD_NAME else path[:_MAX_FIELD_NAME] + "…"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _is(value: Any, kind: str) -> bool:
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return {
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "null": value is None,
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
    }[kind]


_ARTICLE = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "a boolean",
    "null": "null",
    "array": "an array",
    "object": "an object",
}


@cache
def _compile(pattern: str) -> re.Pattern[str]:
    # ECMA-262 `$` (what JSON Schema means) does not match before a trailing newline.
    return re.compile(re.sub(r"(?<!\\)\$$", r"\\Z", pattern))


def _check(value: Any, schema: Mapping[str, Any], path: str, errors: dict[str, str]) -> None:
    if len(errors) >= MAX_ERRORS:
        return
    where = _field(path) or "body"
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, kind) for kind in kinds):
            wanted = " or ".join(_ARTICLE[kind] for kind in kinds)
            errors[where] = f"must be {wanted}, not {_type_name(value)}"
            return
    if "enum" in schema and not any(
        value == option and type(value) is type(option) for option in schema["enum"]
    ):
        errors[where] = f"must be one of {schema['enum']}"
        return
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors[where] = "must not be empty"
        elif "maxLength" in schema and len(value) > schema["maxLength"]:
            errors[where] = f"must be at most {schema['maxLength']} characters"
        elif "pattern" in schema and not _compile(schema["pattern"]).search(value):
            errors[where] = schema.get("x-invalid", f"must match {schema['pattern']}")
    elif _is(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            errors[where] = f"must be at least {schema['minimum']}"
        elif "maximum" in schema and value > schema["maximum"]:
            errors[where] = f"must be at most {schema['maximum']}"
    elif isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors[where] = f"must have at least {schema['minItems']} item(s)"
        elif "maxItems" in schema and len(value) > schema["maxItems"]:
            errors[where] = f"must have at most {schema['maxItems']} items"
        elif "items" in schema:
            for index, item in enumerate(value):
                _check(item, schema["items"], f"{path}[{index}]", errors)
                if len(errors) >= MAX_ERRORS:
                    break
    elif isinstance(value, dict):
        _check_object(value, schema, path, errors)


def _check_object(
    value: dict[str, Any], schema: Mapping[str, Any], path: str, errors: dict[str, str]
) -> None:
    prefix = f"{path}." if path else ""
    properties = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in value:
            errors[_field(prefix + name)] = "is required"
    for name, item in value.items():
        if name in properties:
            _check(item, properties[name], prefix + name, errors)
        elif schema.get("additionalProperties") is False:
            errors[_field(prefix + name)] = "is not a known field"
        elif isinstance(schema.get("additionalProperties"), dict):
            _check(item, schema["additionalProperties"], prefix + name, errors)
        if len(errors) >= MAX_ERRORS:
            return
    for part in schema.get("allOf", []):
        _check(value, part, path, errors)
    if "oneOf" in schema:
        matches = sum(not validate(value, option) for option in schema["oneOf"])
        if matches != 1:
            names = [n for option in schema["oneOf"] for n in option.get("required", [])]
            where = _field(prefix + names[0]) if names else (_field(path) or "body")
            quoted = " or ".join(f"'{n}'" for n in names)
            message = f"give exactly one of {quoted}" if names else "must match one alternative"
            errors.setdefault(where, message)
