"""The OpenAPI 3.1 document of the gateway's own API, built from `operations.OPERATIONS`."""

from __future__ import annotations

from functools import cache
from typing import Any

from gateway.api.openapi.operations import OPERATIONS, Operation
from gateway.api.openapi.schemas import QUERIES, REQUESTS, RESPONSES

_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    202: "Accepted: a lift request now waits for a second admin's approval",
    400: "Invalid request; `fields` names what is wrong",
    401: "No or invalid bearer token",
    403: "The caller lacks the role this operation needs",
    404: "No such item",
    409: "Conflict: a stale base_version (`current_version` says what to rebase on), a"
    " lock already lifted, an alert whose lock is still active",
    413: "Request body too large",
    414: "Request line too long (the server's limit, before any check)",
    431: "Request headers too large (the server's limit, before any check)",
    503: "The database (lock or alert store) cannot be reached",
}
_ROLES = {
    "admin": "An access token of a roles-trusted issuer carrying the 'admin' role",
    "auditor": "An access token of a roles-trusted issuer carrying the 'auditor' role",
    "scraper": "The [metrics] scrape token (or a request from a [metrics] network)",
}
_TAGS = [
    {"name": "policy", "description": "Casbin policy administration (admin)"},
    {"name": "locks", "description": "The kill switch (admin)"},
    {"name": "alerts", "description": "Anomaly alerts (auditor; escalation: admin)"},
    {"name": "audit", "description": "The per-record access log (auditor)"},
    {"name": "health", "description": "Liveness, readiness, public keys, this document"},
]


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once per process)."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "Contractor access-governance gateway: its own API",
            "version": "1",
            "description": "Policy administration, the kill switch, anomaly alerts and the "
            "auditors' access log. Every policy write names the version it was based on "
            "(`base_version`) and is refused with 409 if that is no longer current. Bad "
            "input is a 400 `invalid_request` whose `fields` name what is wrong, checked "
            "against the schemas of this document.",
        },
        "security": [{"bearer": []}],
        "tags": _TAGS,
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "; ".join(_ROLES.values()),
                }
            },
            "schemas": {**REQUESTS, **RESPONSES},
            "responses": {
                f"E{status}": {
                    "description": _STATUS_TEXT[status],
                    "content": _json_content("Error"),
                }
                for status in (400, 401, 403, 404, 409, 413, 414, 431, 503)
            },
        },
    }


def _operation(op: Operation) -> dict[str, Any]:
    ok_status, ok_schema = op.ok
    if op.downloads:
        ok_content = {media: {"schema": {"type": "string"}} for media in op.downloads}
    else:
        ok_content = _json_content(ok_schema)
    responses: dict[str, Any] = {
        str(ok_status): {"description": _STATUS_TEXT[ok_status], "content": ok_content}
    }
    if op.body is not None and ok_status == 201 and op.tag == "policy":
        responses["200"] = {
            "description": "Dry run: the diff, nothing committed",
            "content": _json_content("ChangeResult"),
        }
    statuses = [*op.extra, 414, 431]
    if op.role is not None:
        statuses += [401, 403]
    if op.body is not None or op.query is not None or op.path_params:
        statuses.append(400)
    if op.body is not None:
        statuses.append(413)
        if op.tag == "policy":
            statuses.append(409)
    for status in sorted(set(statuses)):
        if status == 202:
            responses["202"] = {
                "description": _STATUS_TEXT[202],
                "content": _json_content("LiftPending"),
            }
        elif op.operation_id == "ready" and status == 503:
            responses["503"] = {"description": "Not ready", "content": ok_content}
        else:
            responses[str(status)] = {"$ref": f"#/components/responses/E{status}"}
    operation: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "responses": responses,
    }
    if op.role is None:
        operation["security"] = []  # public
    else:
        operation["description"] = f"Needs the '{op.role}' role."
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": schema}
        for name, schema in op.path_params.items()
    ]
    if op.query is not None:
        query = QUERIES[op.query]
        for name, schema in query["properties"].items():
            parameter = {
                "name": name,
                "in": "query",
                "required": name in query["required"],
                "schema": schema,
            }
            if schema.get("type") == "array":
                parameter |= {"style": "form", "explode": True}
            parameters.append(parameter)
    if parameters:
        operation["parameters"] = parameters
    if op.body is not None:
        operation["requestBody"] = {"required": True, "content": _json_content(op.body)}
    return operation


def _json_content(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}
