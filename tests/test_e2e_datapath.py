"""End to end over real sockets: IdP → gateway (gunicorn) → sample dataset service → audit."""

from __future__ import annotations

import hashlib

import orjson
import requests

from tests.conftest import Gateway


def canonical_sha256(record: dict) -> str:
    return hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).hexdigest()


def assert_audit_matches_release(
    gateway: Gateway, response: requests.Response, records: list
) -> None:
    """Every released record has exactly one 'allow' row with its id and content hash."""
    rows = gateway.audit_rows(response.headers["X-Request-Id"])
    released = [
        (r.record_id, r.record_sha256) for r in rows if r.decision == "allow" and r.record_id
    ]
    assert sorted(released) == sorted((rec["id"], canonical_sha256(rec)) for rec in records)


def test_contractor_fetches_a_task_page_and_every_record_is_logged(gateway: Gateway) -> None:
    response = gateway.get("/api/projects/proj-1/tasks/task-1/records?limit=50", "alice")
    assert response.status_code == 200, response.text
    records = response.json()["records"]
    assert len(records) == 50
    assert_audit_matches_release(gateway, response, records)
    rows = gateway.audit_rows(response.headers["X-Request-Id"])
    assert {(r.subject, r.vendor, r.project, r.task) for r in rows} == {
        ("alice", "acme", "proj-1", "task-1")
    }
    assert all(r.policy_version and r.policy_version >= 1 for r in rows)


def test_project_without_grant_is_403_and_the_denial_is_logged(gateway: Gateway) -> None:
    response = gateway.get("/api/projects/proj-3/tasks/task-1/records", "alice")
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    rows = gateway.audit_rows(response.headers["X-Request-Id"])
    assert [(r.decision, r.record_id) for r in rows] == [("deny", None)]


def test_explicit_deny_overrides_vendor_grant(gateway: Gateway) -> None:
    assert gateway.get("/api/projects/proj-1/tasks/task-2/records", "alice").status_code == 200
    response = gateway.get("/api/projects/proj-1/tasks/task-2/records", "bob")
    assert response.status_code == 403


def test_records_outside_a_task_grant_are_filtered_and_logged(gateway: Gateway) -> None:
    # alice may read only task-1 of proj-2; the project listing spans task-1 and task-2.
    response = gateway.get("/api/projects/proj-2/records?offset=298&limit=4", "alice")
    assert response.status_code == 200, response.text
    records = response.json()["records"]
    assert [r["task"] for r in records] == ["task-1", "task-1"]
    assert_audit_matches_release(gateway, response, records)
    rows = gateway.audit_rows(response.headers["X-Request-Id"])
    filtered = [r for r in rows if r.decision == "filtered"]
    assert [r.task for r in filtered] == ["task-2", "task-2"]
    assert all(r.bytes == 0 for r in filtered)


def test_single_record_project_known_only_from_body(gateway: Gateway) -> None:
    allowed = gateway.get("/api/records/rec-2-1-0007", "alice")
    assert allowed.status_code == 200
    assert_audit_matches_release(gateway, allowed, [allowed.json()])
    refused = gateway.get("/api/records/rec-2-2-0007", "alice")
    assert refused.status_code == 403
    assert "text" not in refused.text
    rows = gateway.audit_rows(refused.headers["X-Request-Id"])
    assert [(r.decision, r.record_id) for r in rows] == [("filtered", "rec-2-2-0007")]


def test_annotation_submission_is_forwarded_and_logged(gateway: Gateway) -> None:
    response = requests.post(
        gateway.url + "/api/projects/proj-1/tasks/task-1/records/rec-1-1-0003/annotations",
        json={"label": "positive"},
        headers={"Authorization": f"Bearer {gateway.token('alice')}"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    assert response.json()["record"] == "rec-1-1-0003"
    rows = gateway.audit_rows(response.headers["X-Request-Id"])
    assert [(r.decision, r.record_id, r.project) for r in rows] == [
        ("allow", "rec-1-1-0003", "proj-1")
    ]


def test_opaque_token_checked_at_userinfo_with_vendor_from_claim(gateway: Gateway) -> None:
    response = gateway.get("/api/projects/proj-3/tasks/task-1/records?limit=3", "carol")
    assert response.status_code == 200, response.text
    rows = gateway.audit_rows(response.headers["X-Request-Id"])
    assert {(r.subject, r.vendor) for r in rows} == {("carol", "globex")}
    assert gateway.get("/api/projects/proj-1/tasks/task-1/records", "carol").status_code == 403


def test_rows_equal_released_records_over_a_traffic_run(gateway: Gateway) -> None:
    total_released = 0
    for offset in range(0, 300, 60):
        response = gateway.get(
            f"/api/projects/proj-1/tasks/task-2/records?offset={offset}&limit=60", "alice"
        )
        assert response.status_code == 200
        records = response.json()["records"]
        total_released += len(records)
        assert_audit_matches_release(gateway, response, records)
    assert total_released == 300


def test_upstream_garbage_on_record_route_is_502_and_nothing_released(gateway: Gateway) -> None:
    response = gateway.get("/api/garbage", "alice")
    assert response.status_code == 502
    assert response.json()["error"] == "bad_upstream_response"


def test_upstream_redirect_is_not_followed(gateway: Gateway) -> None:
    response = gateway.get("/api/redirect", "alice", allow_redirects=False)
    assert response.status_code == 302
    assert response.headers["Location"] == "http://example.invalid/"


def test_streaming_route_passes_body_through(gateway: Gateway) -> None:
    response = gateway.get(
        "/api/projects/proj-1/tasks/task-1/export?chunks=3", "alice", stream=True
    )
    assert response.status_code == 200
    lines = [line for line in response.iter_lines() if line]
    assert len(lines) == 3 * 300


def test_bad_query_parameter_is_400(gateway: Gateway) -> None:
    response = gateway.get("/api/projects/proj-1/tasks/task-1/records?project=proj-3", "alice")
    assert response.status_code == 400
    assert response.json()["error"] == "bad_query"


def test_health_ready_and_jwks(gateway: Gateway) -> None:
    assert gateway.get("/_gateway/health").json() == {"status": "ok"}
    ready = gateway.get("/_gateway/ready")
    assert ready.status_code == 200
    assert set(ready.json()["checks"]) == {
        "database",
        "audit_writer",
        "policy",
        "issuer_keys",
        "locks",
    }
    keys = gateway.get("/_gateway/jwks.json").json()["keys"]
    assert keys and all("d" not in key for key in keys)
