"""A canary record fetched through the gateway is withheld and locks the contractor at once.

Two instances on one database: the request that meets the canary is refused (nothing of
its page released), the contractor is locked on both instances within a second, the
alert is raised without a scan, and the rest of the vendor keeps working.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from gateway.db.session import make_engine
from gateway.lockout import lift_lock, list_locks
from tests.conftest import Gateway, launch_gateway

PAGE = "/api/projects/proj-1/tasks/task-1/records?offset=200&limit=4"
ITEM = "/api/records/{record}"
BOUND = 1.0


@pytest.fixture(scope="module")
def second(tmp_path_factory: pytest.TempPathFactory, gateway: Gateway) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("canary-second-instance")
    other = launch_gateway(tmp, gateway.db, gateway.idp, gateway.opaque_idp, gateway.upstream)
    other._tokens = gateway._tokens
    yield other
    other.proc.stop()


@pytest.fixture(scope="module")
def db(gateway: Gateway) -> Iterator[Any]:
    engine = make_engine(gateway.db.url)
    yield engine
    engine.dispose()


def canary_locks(db: Any) -> list[dict[str, Any]]:
    return [lock for lock in list_locks(db) if lock["actor"] == "gateway:canary"]


@pytest.fixture
def bait(gateway: Gateway, db: Any) -> Iterator[str]:
    """A record of bob's page marked as a canary; afterwards unmarked and bob unlocked."""
    page = gateway.get(PAGE, "bob")
    assert page.status_code == 200, page.text
    record_id = page.json()["records"][2]["id"]
    gateway.cli("anomalies", "canary", "add", record_id, "--reason", "canary trip test")
    time.sleep(0.6)  # every worker re-reads its guards within the 0.25 s poll
    yield record_id
    gateway.cli("anomalies", "canary", "remove", record_id, "--reason", "done", check=False)
    # Until every worker has re-read its guards, a request may still trip the canary and
    # lock bob again: lift only after that.
    time.sleep(0.6)
    for lock in canary_locks(db):
        lift_lock(db, lock["id"], actor="test", reason="canary test cleanup")
    deadline = time.monotonic() + 5
    while gateway.get(PAGE, "bob").status_code != 200:
        assert time.monotonic() < deadline, "bob never regained access"
        time.sleep(0.1)


def status(gw: Gateway, path: str, sub: str) -> int:
    return requests.get(
        gw.url + path, headers={"Authorization": f"Bearer {gw.token(sub)}"}, timeout=15
    ).status_code


def test_canary_in_a_page_is_withheld_and_locks_the_contractor_everywhere(
    gateway: Gateway, second: Gateway, db: Any, bait: str
) -> None:
    response = gateway.get(PAGE, "bob")
    tripped_at = time.monotonic()
    assert response.status_code == 403
    assert response.json()["error"] == "locked"
    assert bait.encode() not in response.content
    rows = gateway.audit_rows(response.headers["X-Request-Id"])
    assert sorted((r.decision, r.reason) for r in rows) == sorted(
        [("filtered", "canary")] + [("filtered", "canary_request")] * 3
    )
    assert {r.record_id for r in rows if r.reason == "canary"} == {bait}
    # Locked on both instances within a second of the trip, by the gateway itself.
    (lock,) = canary_locks(db)
    assert (lock["kind"], lock["target"]) == ("contractor", "acme-idp:bob")
    assert bait in lock["reason"] and response.headers["X-Request-Id"] in lock["reason"]
    for gw in (gateway, second):
        while status(gw, PAGE, "bob") != 403:
            assert time.monotonic() - tripped_at < BOUND, f"{gw.url} still serves bob"
            time.sleep(0.02)
    lag = time.monotonic() - tripped_at
    assert lag < BOUND, lag
    # A contract lock: the rest of the vendor keeps working.
    assert status(second, "/api/projects/proj-1/tasks/task-1/records?limit=2", "alice") == 200
    # The alert is there before any scan ran.
    alerts = gateway.db.rows(
        "SELECT detector, contractor, severity, status FROM anomaly_alerts WHERE dedup_key = :k",
        k=f"canary_touch:acme-idp:bob:{bait}",
    )
    assert [tuple(a) for a in alerts] == [("canary_touch", "acme-idp:bob", "high", "open")]


def test_canary_named_in_the_path_is_refused_before_the_upstream(
    gateway: Gateway, db: Any, bait: str
) -> None:
    response = gateway.get(ITEM.format(record=bait), "bob")
    assert response.status_code == 403
    rows = gateway.audit_rows(response.headers["X-Request-Id"])
    assert [(r.decision, r.reason, r.record_id) for r in rows] == [("deny", "canary", bait)]
    assert [lock["target"] for lock in canary_locks(db)] == ["acme-idp:bob"]
