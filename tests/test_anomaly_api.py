"""The alerts API over the real gateway: auditor role for reading and triage, admin role
for escalating an alert into a lock; validation answers 400 with the fields named.

Alerts are stored straight into the gateway's database (as a scan would); they name
contractors nobody else's tests use (acme-idp:mallory, an address), and the lock made
by escalation is lifted at the end.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from gateway.anomaly.data import Who
from gateway.anomaly.detectors import Finding
from gateway.anomaly.store import upsert_findings
from gateway.db.session import make_engine
from gateway.lockout import lift_lock, list_locks
from tests.conftest import Gateway

BASE = "/_gateway/audit/alerts"
MALLORY = Who("acme-idp:mallory", "acme-idp", "mallory", "acme")
PROBER = Who("ip:198.51.100.250", None, None, None, "198.51.100.250")


@pytest.fixture(scope="module")
def alerts(gateway: Gateway) -> Iterator[dict[str, int]]:
    engine = make_engine(gateway.db.url)
    tag = secrets.token_hex(4)
    now = time.time()
    findings = [
        Finding(
            "volume_spike",
            "critical",
            MALLORY,
            now - 7200,
            now - 3600,
            now - 3600,
            12.5,
            "fetched 4,200 records in the hour; own median 180, peers 210",
            f"volume_spike:{MALLORY.key}:{tag}",
            project="proj-1",
            evidence={"rows": [1, 2, 3], "request_ids": ["r1"], "query": {}},
        ),
        Finding(
            "probing",
            "medium",
            PROBER,
            now - 600,
            now - 300,
            now - 300,
            3.0,
            "40 refused requests over 30 distinct paths",
            f"probing:{PROBER.key}:{tag}",
            evidence={"rows": [4], "request_ids": ["r2"], "query": {}},
        ),
    ]
    stored = upsert_findings(engine, findings)
    ids = dict(zip(("mallory", "prober"), stored.new, strict=True))
    yield ids
    for lock in list_locks(engine):
        if lock["target"] == MALLORY.key:
            lift_lock(engine, lock["id"], actor="test", reason="anomaly api test cleanup")
    engine.dispose()


def call(gateway: Gateway, method: str, path: str, sub: str | None, **kwargs: Any) -> Any:
    headers = dict(kwargs.pop("headers", {}))
    if sub:
        headers["Authorization"] = f"Bearer {gateway.token(sub)}"
    return requests.request(method, gateway.url + path, headers=headers, timeout=15, **kwargs)


def test_listing_needs_the_auditor_role(gateway: Gateway, alerts: dict[str, int]) -> None:
    assert call(gateway, "GET", BASE, None).status_code == 401
    assert call(gateway, "GET", BASE, "alice").status_code == 403
    assert call(gateway, "GET", BASE, "ann").status_code == 403  # admin, not auditor
    listed = call(gateway, "GET", BASE, "audrey", params={"contractor": MALLORY.key})
    assert listed.status_code == 200
    body = listed.json()
    assert [a["id"] for a in body["alerts"]] == [alerts["mallory"]]
    alert = body["alerts"][0]
    assert alert["status"] == "open" and alert["explanation"].startswith("fetched 4,200")
    assert alert["evidence"]["rows"] == [1, 2, 3]
    one = call(gateway, "GET", f"{BASE}/{alerts['mallory']}", "audrey")
    assert one.status_code == 200 and one.json()["detector"] == "volume_spike"
    assert call(gateway, "GET", f"{BASE}/999999", "audrey").status_code == 404


def test_list_filters_are_validated(gateway: Gateway, alerts: dict[str, int]) -> None:
    filtered = call(
        gateway,
        "GET",
        BASE,
        "audrey",
        params={"severity": "high", "detector": ["volume_spike", "probing"], "limit": "5"},
    )
    assert filtered.status_code == 200
    assert {a["severity"] for a in filtered.json()["alerts"]} <= {"high", "critical"}
    for params, field in [
        ({"status": "closed"}, "status"),
        ({"detector": "telepathy"}, "detector"),
        ({"severity": "dire"}, "severity"),
        ({"limit": "0"}, "limit"),
        ({"limit": "abc"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-01T00:00:00"}, "since"),
        ({"before": "-3"}, "before"),
        ({"colour": "red"}, "colour"),
    ]:
        refused = call(gateway, "GET", BASE, "audrey", params=params)
        assert refused.status_code == 400, params
        assert field in refused.json()["fields"], refused.json()


def test_patch_status_assignee_notes(gateway: Gateway, alerts: dict[str, int]) -> None:
    path = f"{BASE}/{alerts['prober']}"
    changed = call(
        gateway,
        "PATCH",
        path,
        "audrey",
        json={"status": "acknowledged", "assignee": "audrey", "notes": "looking into it"},
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["status"], changed.json()["assignee"]) == ("acknowledged", "audrey")
    cleared = call(
        gateway, "PATCH", path, "audrey", json={"assignee": None, "status": "false_positive"}
    )
    assert cleared.status_code == 200
    assert cleared.json()["assignee"] is None and cleared.json()["notes"] == "looking into it"
    events = gateway.db.rows(
        "SELECT actor, action FROM admin_events WHERE target = :t ORDER BY id",
        t=f"alert:{alerts['prober']}",
    )
    assert [tuple(e) for e in events] == [("lab-idp:audrey", "alert.update")] * 2


def test_patch_validation_and_roles(gateway: Gateway, alerts: dict[str, int]) -> None:
    path = f"{BASE}/{alerts['prober']}"
    assert call(gateway, "PATCH", path, None, json={"status": "resolved"}).status_code == 401
    assert call(gateway, "PATCH", path, "alice", json={"status": "resolved"}).status_code == 403
    assert call(gateway, "PATCH", path, "ann", json={"status": "resolved"}).status_code == 403
    for body, field in [
        ({"status": "closed"}, "status"),
        ({"status": 3}, "status"),
        ({"assignee": 7}, "assignee"),
        ({"assignee": ""}, "assignee"),
        ({"assignee": "x" * 300}, "assignee"),
        ({"notes": ["a"]}, "notes"),
        ({"notes": "n" * 10_001}, "notes"),
        ({}, "body"),
        ({"severity": "low"}, "severity"),
    ]:
        refused = call(gateway, "PATCH", path, "audrey", json=body)
        assert refused.status_code == 400, (body, refused.text)
        assert field in refused.json()["fields"], refused.json()
    not_json = call(
        gateway,
        "PATCH",
        path,
        "audrey",
        data="status=resolved",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert not_json.status_code == 400 and "body" in not_json.json()["fields"]
    broken = call(
        gateway,
        "PATCH",
        path,
        "audrey",
        data="{not json",
        headers={"Content-Type": "application/json"},
    )
    assert broken.status_code == 400
    assert (
        call(gateway, "PATCH", f"{BASE}/999999", "audrey", json={"status": "resolved"}).status_code
        == 404
    )


def test_escalate_creates_a_lock_in_one_step(gateway: Gateway, alerts: dict[str, int]) -> None:
    path = f"{BASE}/{alerts['mallory']}/escalate"
    body = {"reason": "bulk scrape confirmed by the vendor", "ttl": "2h"}
    assert call(gateway, "POST", path, "audrey", json=body).status_code == 403  # auditor only
    assert call(gateway, "POST", path, "ann", json={"reason": " "}).status_code == 400
    assert call(gateway, "POST", path, "ann", json={**body, "kind": "issuer"}).status_code == 400
    assert call(gateway, "POST", path, "ann", json={**body, "ttl": "soon"}).status_code == 400
    made = call(gateway, "POST", path, "ann", json=body)
    assert made.status_code == 201, made.text
    lock, alert = made.json()["lock"], made.json()["alert"]
    assert (lock["kind"], lock["target"], lock["active"]) == ("contractor", MALLORY.key, True)
    assert lock["actor"] == "lab-idp:ann" and f"alert {alerts['mallory']}" in lock["reason"]
    assert alert["lock_id"] == lock["id"] and alert["status"] == "acknowledged"
    try:
        # The lock is the kill switch's own: listed by the admin API, in force.
        shown = call(gateway, "GET", f"/_gateway/admin/locks/{lock['id']}", "ann")
        assert shown.status_code == 200 and shown.json()["active"] is True
        again = call(gateway, "POST", path, "ann", json=body)
        assert again.status_code == 409
    finally:
        engine = make_engine(gateway.db.url)
        lift_lock(engine, lock["id"], actor="test", reason="anomaly api test cleanup")
        engine.dispose()
    # An address cannot be locked.
    address = call(gateway, "POST", f"{BASE}/{alerts['prober']}/escalate", "ann", json=body)
    assert address.status_code == 409
    assert call(gateway, "POST", f"{BASE}/999999/escalate", "ann", json=body).status_code == 404


def test_refused_large_bodies_keep_the_connection_usable(
    gateway: Gateway, alerts: dict[str, int]
) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {gateway.token('alice')}"
    path = f"{gateway.url}{BASE}/{alerts['prober']}"
    for _ in range(3):
        refused = session.patch(path, json={"notes": "x" * 1_000_000}, timeout=15)
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
        # The next request on the same kept-alive connection is answered, not reset.
        assert session.get(path, timeout=15).status_code == 403
    session.headers["Authorization"] = f"Bearer {gateway.token('audrey')}"
    too_large = session.patch(path, json={"notes": "x" * 200_000}, timeout=15)
    assert too_large.status_code == 413
    assert session.get(path, timeout=15).status_code == 200
