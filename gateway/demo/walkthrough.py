"""The scripted walk-through: the requests a newcomer would try, and what they must show.

As alice, three requests through the gateway (a page she may read, a project she may
not, a listing partly filtered), each checked against its access-log rows; then the
lab's admin and auditor APIs as ann and audrey, and alice's token refused there.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import orjson
import urllib3

from gateway.demo.errors import DemoError
from gateway.demo.processes import Demo
from gateway.demo.setup import DEMO_ISSUER
from gateway.demo.token import TokenFlowError, obtain_access_token

TASK_PAGE = "/api/projects/proj-1/tasks/task-1/records?limit=5"
DENIED = "/api/projects/proj-3/tasks/task-1/records?limit=5"
FILTERED = "/api/projects/proj-2/records?offset=298&limit=4"
EXPLAINED_RULE = f"p, {DEMO_ISSUER}:alice, proj-2, task-1, read, allow"
EXPLAIN = (
    f"/_gateway/admin/policy/explain?sub={DEMO_ISSUER}:alice&vendor=acme"
    "&project=proj-2&task=task-1&action=read"
)
EVENTS = "/_gateway/audit/events?vendor=acme&limit=100"


@dataclass
class StepResult:
    summary: str
    released: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class Step:
    path: str
    label: str
    check: Callable[[urllib3.BaseHTTPResponse, list[dict[str, Any]]], StepResult]


def _records(response: urllib3.BaseHTTPResponse) -> list[dict[str, Any]]:
    try:
        body = orjson.loads(response.data)
    except orjson.JSONDecodeError:
        return []
    records = body.get("records") if isinstance(body, dict) else None
    return records if isinstance(records, list) else []


def canonical_sha256(record: dict[str, Any]) -> str:
    """The gateway's record fingerprint: SHA-256 of the record's canonical JSON."""
    return hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _logged_release_problems(records: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list:
    """Every record the client received has exactly one 'allow' row with its id and hash."""
    released = sorted((r["id"], canonical_sha256(r)) for r in records)
    logged = sorted(
        (r["record_id"], r["record_sha256"])
        for r in rows
        if r["decision"] == "allow" and r["record_id"]
    )
    if released != logged:
        return [f"records released {released} do not match 'allow' audit rows {logged}"]
    return []


def _identity_problems(rows: list[dict[str, Any]]) -> list[str]:
    wrong = {(r["issuer"], r["subject"], r["vendor"]) for r in rows} - {
        ("lab-idp", "alice", "acme")
    }
    return [f"audit rows name {sorted(wrong)}, expected lab-idp/alice/acme"] if wrong else []


def expect_page(response: urllib3.BaseHTTPResponse, rows: list[dict[str, Any]]) -> StepResult:
    records = _records(response) if response.status == 200 else []
    summary = (
        f"HTTP {response.status}, {len(records)} records released, "
        f"{len(rows)} audit rows ({_decisions(rows)})"
    )
    problems = []
    if response.status != 200 or len(records) != 5:
        problems.append(f"expected HTTP 200 with 5 records, got {response.status}/{len(records)}")
    problems += _logged_release_problems(records, rows) + _identity_problems(rows)
    return StepResult(summary, len(records), problems)


def expect_denied(response: urllib3.BaseHTTPResponse, rows: list[dict[str, Any]]) -> StepResult:
    reason = rows[0]["reason"] if len(rows) == 1 else "?"
    summary = f"HTTP {response.status}, {len(rows)} audit row ({_decisions(rows)}, {reason})"
    problems = []
    if response.status != 403:
        problems.append(f"expected HTTP 403, got {response.status}")
    if [(r["decision"], r["record_id"]) for r in rows] != [("deny", None)]:
        problems.append(f"expected one 'deny' row without a record, got {_decisions(rows)}")
    problems += _identity_problems(rows)
    return StepResult(summary, 0, problems)


def expect_filtered(response: urllib3.BaseHTTPResponse, rows: list[dict[str, Any]]) -> StepResult:
    records = _records(response) if response.status == 200 else []
    filtered = [r for r in rows if r["decision"] == "filtered"]
    summary = (
        f"HTTP {response.status}, {len(records)} of 4 records released "
        f"({', '.join(sorted({r.get('task', '?') for r in records})) or 'none'}), "
        f"{len(filtered)} withheld; audit: {_decisions(rows)}"
    )
    problems = []
    if response.status != 200 or [r.get("task") for r in records] != ["task-1", "task-1"]:
        problems.append("expected HTTP 200 with exactly the two task-1 records")
    if [r["task"] for r in filtered] != ["task-2", "task-2"]:
        problems.append(f"expected two 'filtered' task-2 rows, got {_decisions(rows)}")
    problems += _logged_release_problems(records, rows) + _identity_problems(rows)
    return StepResult(summary, len(records), problems)


def _json_object(response: urllib3.BaseHTTPResponse) -> dict[str, Any]:
    try:
        body = orjson.loads(response.data)
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def expect_explained(response: urllib3.BaseHTTPResponse) -> StepResult:
    body = _json_object(response)
    decision = body.get("decision", "?")
    summary = f"HTTP {response.status}, {decision}, by: {', '.join(body.get('allow_rules', []))}"
    problems = []
    if response.status != 200 or decision != "allow":
        problems.append(f"expected HTTP 200 and 'allow', got {response.status}/{decision}")
    elif EXPLAINED_RULE not in body.get("allow_rules", []):
        problems.append(f"expected the rule {EXPLAINED_RULE!r} among {body.get('allow_rules')}")
    return StepResult(summary, 0, problems)


def expect_events(response: urllib3.BaseHTTPResponse, expected: int) -> StepResult:
    events = _json_object(response).get("events")
    count = len(events) if isinstance(events, list) else 0
    summary = f"HTTP {response.status}, {count} access-log events of vendor acme (the rows above)"
    problems = []
    if response.status != 200 or count != expected:
        problems.append(f"expected HTTP 200 with {expected} events, got {response.status}/{count}")
    return StepResult(summary, 0, problems)


def expect_no_role(response: urllib3.BaseHTTPResponse) -> StepResult:
    error = _json_object(response).get("error", "?")
    summary = f"HTTP {response.status} {error}: a contractor's token carries no admin role"
    problems = []
    if response.status != 403:
        problems.append(f"expected HTTP 403, got {response.status}")
    return StepResult(summary, 0, problems)


def _outcome(label: str, summary: str, *, ok: bool = True) -> None:
    click.echo(f"  {'ok  ' if ok else 'FAIL'}  {label:<24} {summary}")


def _decisions(rows: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["decision"]] = counts.get(row["decision"], 0) + 1
    return ", ".join(f"{n} {decision}" for decision, n in sorted(counts.items())) or "none"


def audit_rows(db_path: Path, request_id: str) -> list[dict[str, Any]]:
    """The access-log rows of one request (committed before the response was released)."""
    if not request_id:
        return []
    connection = sqlite3.connect(db_path, timeout=30)
    try:
        connection.row_factory = sqlite3.Row
        cursor = connection.execute(
            "select issuer, subject, vendor, project, task, record_id, record_sha256, "
            "decision, reason from access_log where request_id = ? order by seq",
            (request_id,),
        )
        return [dict(row) for row in cursor]
    finally:
        connection.close()


def get_through_gateway(demo: Demo, path: str, token: str) -> urllib3.BaseHTTPResponse:
    try:
        return demo.http.request(
            "GET",
            demo.ports.gateway_url + path,
            headers={"Authorization": f"Bearer {token}"},
            timeout=15.0,
            retries=False,
            redirect=False,
        )
    except urllib3.exceptions.HTTPError as error:
        raise DemoError(f"GET {path} through the gateway failed: {error}") from None


def walkthrough(demo: Demo) -> list[str]:
    """Run the newcomer's requests once; print outcomes; return the failed expectations."""
    problems: list[str] = []
    click.echo("\nRan once for you, as alice (vendor acme):")
    try:
        token = obtain_access_token(demo.ports.idp_url, "alice")
    except TokenFlowError as error:
        raise DemoError(f"logging in as alice failed: {error}") from None
    _outcome("log in", f"authorization code flow -> opaque access token ({len(token)} chars)")

    steps = [
        Step(TASK_PAGE, "proj-1/task-1, limit 5", expect_page),
        Step(DENIED, "proj-3 (no grant)", expect_denied),
        Step(FILTERED, "proj-2, records 298-301", expect_filtered),
    ]
    released_total = allow_rows_total = rows_total = 0
    for step in steps:
        response = get_through_gateway(demo, step.path, token)
        rows = audit_rows(demo.db_path, response.headers.get("X-Request-Id", ""))
        result = step.check(response, rows)
        released_total += result.released
        allow_rows_total += sum(1 for r in rows if r["decision"] == "allow" and r["record_id"])
        rows_total += len(rows)
        _outcome(step.label, result.summary, ok=not result.problems)
        problems += [f"{step.label}: {p}" for p in result.problems]
    balanced = released_total == allow_rows_total
    _outcome(
        "access log",
        f"{rows_total} rows for these 3 requests; {released_total} records released, "
        f"{allow_rows_total} 'allow' rows (ids and SHA-256 checked)",
        ok=balanced and not problems,
    )
    if not balanced:
        problems.append(
            f"audit: {released_total} records released but {allow_rows_total} 'allow' rows"
        )
    return problems + lab_walkthrough(demo, token, rows_total)


def lab_walkthrough(demo: Demo, alice_token: str, access_rows: int) -> list[str]:
    """The admin and auditor APIs, as ann and audrey; alice's token must not open them."""
    click.echo(
        f"\nThe lab's own APIs, as admin ann and auditor audrey ({DEMO_ISSUER} is trusted "
        "for roles):"
    )
    tokens = {}
    for sub in ("ann", "audrey"):
        try:
            tokens[sub] = obtain_access_token(demo.ports.idp_url, sub)
        except TokenFlowError as error:
            raise DemoError(f"logging in as {sub} failed: {error}") from None
    checks = [
        ("ann: policy explain", EXPLAIN, tokens["ann"], expect_explained),
        (
            "audrey: audit events",
            EVENTS,
            tokens["audrey"],
            lambda response: expect_events(response, access_rows),
        ),
        ("alice: policy explain", EXPLAIN, alice_token, expect_no_role),
    ]
    problems: list[str] = []
    for label, path, token, check in checks:
        result = check(get_through_gateway(demo, path, token))
        _outcome(label, result.summary, ok=not result.problems)
        problems += [f"{label}: {p}" for p in result.problems]
    return problems
