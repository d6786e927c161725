"""Access rows as OCSF API Activity events (class 6003), one event per row, never aggregated.

Pinned to OCSF 1.3.0 (`OCSF_VERSION`, also in every event's `metadata.version`); the class
definition the test suite validates against is vendored next to this file
(ocsf_api_activity_1.3.0.json). Mapping (docs/DESIGN.md §6):

| access row            | OCSF 1.3.0 API Activity                                         |
|-----------------------|-----------------------------------------------------------------|
| time                  | `time` (epoch ms), `unmapped.time` (µs text, as hashed)         |
| issuer, subject       | `actor.user.uid` = "issuer:sub", `actor.user.name` = sub        |
| vendor                | `actor.user.org.name`                                           |
| record_id, project    | `resources[0].uid`, `resources[0].group.name`, `type` "record"  |
| method                | `activity_id`: POST 1 Create, GET/HEAD 2 Read, PUT/PATCH 3      |
|                       | Update, DELETE 4 Delete, else 99 Other; `http_request.http_method`|
| path, user_agent      | `http_request.url.path`, `http_request.user_agent`              |
| client_ip             | `src_endpoint.ip`                                               |
| action                | `api.operation` (the route's action, e.g. "read")               |
| request_id            | `api.request.uid`, `metadata.correlation_uid`                   |
| upstream_status       | `api.response.code`                                             |
| decision, reason      | `status_id` 1 Success (allow) / 2 Failure (deny, filtered),     |
|                       | `status_detail` = reason, `severity_id` 1 / 2 (filtered) / 3    |
|                       | (deny); decision and reason again under `unmapped`              |
| everything else       | `unmapped`: task, record_sha256, policy_version, bytes,         |
|                       | decision, reason, access row id, chain_id, seq, prev_hash,      |
|                       | row_hash (so an exported event can be re-hashed)                |
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC
from typing import Any

from gateway.audit.chain import canonical_time

OCSF_VERSION = "1.3.0"
CLASS_UID = 6003
CATEGORY_UID = 6
PRODUCT = {"name": "Contractor access-governance gateway", "vendor_name": "contractor-gateway"}

ACTIVITIES = {1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"}
METHOD_ACTIVITY = {"POST": 1, "GET": 2, "HEAD": 2, "PUT": 3, "PATCH": 3, "DELETE": 4}
# decision -> (status_id, status, severity_id, severity)
DECISIONS = {
    "allow": (1, "Success", 1, "Informational"),
    "filtered": (2, "Failure", 2, "Low"),
    "deny": (2, "Failure", 3, "Medium"),
}
_UNKNOWN_DECISION = (99, "Other", 0, "Unknown")


def to_event(row: Mapping[str, Any]) -> dict[str, Any]:
    """One OCSF API Activity event for one access row (a mapping of access_log columns)."""
    method = row["method"]
    activity_id = METHOD_ACTIVITY.get(method, 99)
    status_id, status, severity_id, severity = DECISIONS.get(row["decision"], _UNKNOWN_DECISION)
    stamp = row["time"]
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    subject, issuer = row["subject"], row["issuer"]
    if subject is not None:
        user: dict[str, Any] = {"uid": f"{issuer}:{subject}", "name": subject, "type_id": 1}
        user["type"] = "User"
    else:  # refused before anyone was identified
        user = {"name": "unauthenticated", "type_id": 0, "type": "Unknown"}
    if row["vendor"] is not None:
        user["org"] = {"name": row["vendor"]}
    http_request: dict[str, Any] = {"http_method": method, "url": {"path": row["path"]}}
    if row["user_agent"] is not None:
        http_request["user_agent"] = row["user_agent"]
    api: dict[str, Any] = {
        "operation": row["action"] or method,
        "request": {"uid": row["request_id"]},
    }
    if row["upstream_status"] is not None:
        api["response"] = {"code": row["upstream_status"]}
    event: dict[str, Any] = {
        "class_uid": CLASS_UID,
        "class_name": "API Activity",
        "category_uid": CATEGORY_UID,
        "category_name": "Application Activity",
        "activity_id": activity_id,
        "activity_name": ACTIVITIES[activity_id],
        "type_uid": CLASS_UID * 100 + activity_id,
        "type_name": f"API Activity: {ACTIVITIES[activity_id]}",
        "time": int(stamp.timestamp() * 1000),
        "timezone_offset": 0,
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status_id,
        "status": status,
        "metadata": {
            "version": OCSF_VERSION,
            "product": PRODUCT,
            "log_name": "access_log",
            "uid": f"{row['chain_id']}:{row['seq']}",
            "correlation_uid": row["request_id"],
        },
        "actor": {"user": user},
        "api": api,
        "http_request": http_request,
        "src_endpoint": (
            {"ip": row["client_ip"]} if row["client_ip"] else {"name": "unknown client"}
        ),
        "unmapped": {
            "access_log_id": row.get("id"),
            "time": canonical_time(stamp),
            "task": row["task"],
            "record_sha256": row["record_sha256"],
            "policy_version": row["policy_version"],
            "bytes": row["bytes"],
            "decision": row["decision"],
            "reason": row["reason"],
            "chain_id": row["chain_id"],
            "seq": row["seq"],
            "prev_hash": row["prev_hash"],
            "row_hash": row["row_hash"],
        },
    }
    if row["reason"] is not None:
        event["status_detail"] = row["reason"]
    if row["record_id"] is not None:
        resource: dict[str, Any] = {"uid": row["record_id"], "type": "record"}
        if row["project"] is not None:
            resource["group"] = {"name": row["project"]}
        event["resources"] = [resource]
    elif row["project"] is not None:  # a refusal before any record: the project asked for
        event["resources"] = [{"name": row["project"], "type": "project"}]
    return event
