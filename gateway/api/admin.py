"""Admin API under /_gateway/admin/: thin views over gateway.policy.admin.

Each view parses and validates its input against the schemas of `gateway.api.openapi`
(the same ones the OpenAPI document publishes), calls `PolicyAdmin`, and serialises the
result. Bad input is a 400 naming the field; a write based on a stale version is a 409.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from gateway.api import openapi
from gateway.api.auth import ADMIN, actor, error_response, require_role
from gateway.api.bodies import (
    InvalidRequest,
    bad_request,
    request_body,
    request_query,
    use_json_bodies,
)
from gateway.policy import store
from gateway.policy.admin import PolicyAdmin, PolicyValidationError, subject_name
from gateway.policy.rules import PolicyFileError, Rule, format_instant, parse_instant
from gateway.timestamps import rfc3339

admin_blueprint = Blueprint("admin", __name__, url_prefix=openapi.ADMIN_PREFIX)

# Request bodies larger than this are refused before they are read (413).
MAX_BODY_BYTES = 1024 * 1024
MAX_POLICY_BODY_BYTES = 40 * 1024 * 1024
use_json_bodies(admin_blueprint)

# Times outside these bounds are refused: the policy store writes whole seconds in UTC.
_EARLIEST = 0.0  # 1970-01-01
_LATEST = 253_402_300_799.0  # 9999-12-31T23:59:59Z


@admin_blueprint.errorhandler(PolicyValidationError)
def _refused(error: PolicyValidationError) -> Any:
    rename = _SERVICE_FIELDS.get(request.endpoint or "", {})
    return bad_request({rename.get(k, k): v for k, v in error.errors.items()})


@admin_blueprint.errorhandler(store.StaleVersion)
def _stale(error: store.StaleVersion) -> Any:
    return error_response(
        409,
        "stale_version",
        f"the policy is at version {error.current}; this change was based on "
        f"{error.base}: reload and retry",
        current_version=error.current,
    )


# The service names some errors after its own concepts; say which request field they mean.
_SERVICE_FIELDS = {
    "admin.apply_policy": {"rules": "policy"},
    "admin.rollback": {"rules": "version"},
}


def _admin() -> PolicyAdmin:
    return current_app.extensions["gateway"].policy_admin


# --- input --------------------------------------------------------------------------------


def _body(schema: str, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    return request_body(schema, max_bytes)


def _instant(body: dict[str, Any], name: str) -> float | None:
    text = body.get(name)
    if text is None:
        return None
    try:
        epoch = parse_instant(text, name)
    except (PolicyFileError, ValueError, OverflowError):
        raise InvalidRequest(
            {name: f"{text!r} is not an ISO 8601 time with a UTC offset (2026-12-01T00:00:00Z)"}
        ) from None
    if not _EARLIEST <= epoch <= _LATEST:
        raise InvalidRequest({name: "must be between 1970 and 9999"})
    return epoch


def _window(body: dict[str, Any]) -> tuple[float | None, float | None]:
    not_before, not_after = _instant(body, "from"), _instant(body, "until")
    if not_after is not None:
        # The store keeps whole seconds; compare what will actually be stored.
        if not_before is not None and int(not_after) <= int(not_before):
            raise InvalidRequest({"until": "must be at least a second after 'from'"})
        if int(not_after) <= time.time():
            raise InvalidRequest({"until": "is in the past"})
    return not_before, not_after


def _subject(body: dict[str, Any]) -> str:
    return subject_name(sub=body.get("subject"), vendor=body.get("vendor"))


def _int(value: Any) -> int:
    return int(value)  # the schema let through an integer, maybe written as 3.0


# --- output -------------------------------------------------------------------------------


def rule_json(rule: Rule) -> dict[str, Any]:
    is_p = rule.ptype == "p"
    return {
        "line": rule.to_csv_line(),
        "ptype": rule.ptype,
        "subject": rule.subject,
        "project": rule.project,
        "task": rule.values[2] if is_p else None,
        "action": rule.values[3] if is_p else None,
        "role": None if is_p else rule.values[1],
        "effect": rule.values[4] if is_p else None,
        "not_before": format_instant(rule.not_before) if rule.not_before is not None else None,
        "not_after": format_instant(rule.not_after) if rule.not_after is not None else None,
    }


def version_json(info: store.VersionInfo) -> dict[str, Any]:
    data = info.as_dict()
    if info.created_at.tzinfo is None:  # SQLite drops the offset of a UTC time: see report
        data["created_at"] = rfc3339(info.created_at)
    return data


def _change(result: Any, *, created: int = 201) -> Any:
    return jsonify(result.as_dict()), (200 if result.version is None else created)


# --- reading ------------------------------------------------------------------------------


@admin_blueprint.get("/policy")
@require_role(ADMIN)
def list_policy() -> Any:
    query = request_query("ListPolicyQuery")
    version, rules = _admin().list_rules(
        project=query.get("project"), subject=query.get("subject"), vendor=query.get("vendor")
    )
    return jsonify(version=version, rules=[rule_json(rule) for rule in rules])


@admin_blueprint.get("/policy/versions")
@require_role(ADMIN)
def list_versions() -> Any:
    query = request_query("HistoryQuery")
    versions = _admin().history(limit=query.get("limit", 50))
    return jsonify(versions=[version_json(info) for info in versions])


@admin_blueprint.get("/policy/versions/<int:version>")
@require_role(ADMIN)
def get_version(version: int) -> Any:
    try:
        if version > openapi.VERSION["maximum"]:
            raise KeyError(version)
        info = store.version_info(_admin().db, version)
    except KeyError:
        return error_response(404, "not_found", f"no policy version {version}")
    return jsonify(version_json(info))


@admin_blueprint.get("/policy/diff")
@require_role(ADMIN)
def diff_versions() -> Any:
    query = request_query("DiffQuery")
    try:
        changes = _admin().diff(query["from"], query["to"])
    except PolicyValidationError as missing:
        return error_response(404, "not_found", "; ".join(missing.errors.values()))
    return jsonify({"from": query["from"], "to": query["to"], **changes})


@admin_blueprint.get("/policy/explain")
@require_role(ADMIN)
def explain() -> Any:
    query = request_query("ExplainQuery")
    explanation = _admin().explain(
        sub=query["sub"],
        vendor=query["vendor"],
        project=query["project"],
        task=query.get("task", "*"),
        action=query["action"],
    )
    return jsonify(explanation.as_dict())


# --- writing ------------------------------------------------------------------------------


@admin_blueprint.post("/policy/grants")
@require_role(ADMIN)
def grant() -> Any:
    body = _body("GrantRequest")
    not_before, not_after = _window(body)
    result = _admin().grant(
        actor=actor(),
        reason=body["reason"],
        subject=_subject(body),
        project=body["project"],
        task=body.get("task", "*"),
        role=body.get("role"),
        action=body.get("action"),
        not_before=not_before,
        not_after=not_after,
        base_version=_int(body["base_version"]),
        dry_run=body.get("dry_run", False),
        new_project=body.get("new_project", False),
    )
    return _change(result)


@admin_blueprint.post("/policy/denies")
@require_role(ADMIN)
def deny() -> Any:
    body = _body("DenyRequest")
    not_before, not_after = _window(body)
    result = _admin().deny(
        actor=actor(),
        reason=body["reason"],
        subject=_subject(body),
        project=body["project"],
        task=body.get("task", "*"),
        action=body["action"],
        not_before=not_before,
        not_after=not_after,
        base_version=_int(body["base_version"]),
        dry_run=body.get("dry_run", False),
        new_project=body.get("new_project", False),
    )
    return _change(result)


@admin_blueprint.post("/policy/roles")
@require_role(ADMIN)
def define_role() -> Any:
    body = _body("RoleRequest")
    result = _admin().define_role(
        actor=actor(),
        reason=body["reason"],
        project=body["project"],
        role=body["role"],
        actions=body["actions"],
        base_version=_int(body["base_version"]),
        dry_run=body.get("dry_run", False),
        new_project=body.get("new_project", False),
    )
    return _change(result)


@admin_blueprint.post("/policy/revocations")
@require_role(ADMIN)
def revoke() -> Any:
    body = _body("RevokeRequest", MAX_POLICY_BODY_BYTES)
    try:
        result = _admin().revoke(
            actor=actor(),
            reason=body["reason"],
            lines=body["rules"],
            base_version=_int(body["base_version"]),
            dry_run=body.get("dry_run", False),
        )
    except (PolicyValidationError, store.StaleVersion):
        raise
    except (ValueError, OverflowError) as error:  # a time the parser let through: see report
        raise InvalidRequest({"rules": f"a validity window is out of range ({error})"}) from None
    return _change(result, created=200)


@admin_blueprint.post("/policy/apply")
@require_role(ADMIN)
def apply_policy() -> Any:
    body = _body("ApplyRequest", MAX_POLICY_BODY_BYTES)
    try:
        result = _admin().apply(
            actor=actor(),
            reason=body["reason"],
            text=body["policy"],
            base_version=_int(body["base_version"]),
            dry_run=body.get("dry_run", False),
            confirm_removals=body.get("confirm_removals", False),
            allow_empty=body.get("allow_empty", False),
        )
    except (PolicyValidationError, store.StaleVersion):
        raise
    except (ValueError, OverflowError) as error:  # a time the parser let through: see report
        raise InvalidRequest({"policy": f"a validity window is out of range ({error})"}) from None
    return _change(result)


@admin_blueprint.post("/policy/rollback")
@require_role(ADMIN)
def rollback() -> Any:
    body = _body("RollbackRequest")
    result = _admin().rollback(
        actor=actor(),
        reason=body["reason"],
        version=_int(body["version"]),
        base_version=_int(body["base_version"]),
    )
    return _change(result)


# --- the OpenAPI document (outside the admin prefix, readable without a token) -----------


def openapi_json() -> Any:
    return jsonify(openapi.document())


@admin_blueprint.record_once
def _register_openapi(state: Any) -> None:
    state.app.add_url_rule(openapi.OPENAPI_PATH, "openapi", openapi_json, methods=["GET"])
