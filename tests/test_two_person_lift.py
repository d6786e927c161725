"""The two-person rule: cutting a vendor off takes one admin, giving it back takes two.

A real gateway under gunicorn with the default `[lockout] two_person_lift` (vendor and
issuer locks), real tokens from the lab IdP (admins ann and adam), the CLI as a
subprocess; the data path shows when access really returns."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from sqlalchemy import text

from tests.conftest import Gateway, Proc, dedicated_gateway

LOCKS = "/_gateway/admin/locks"


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, idp: Proc, opaque_idp: Proc, upstream: Proc
) -> Iterator[Gateway]:
    with dedicated_gateway(
        tmp_path_factory,
        idp,
        opaque_idp,
        upstream,
        "two-person",
        two_person_lift='["vendor", "issuer"]',
    ) as gateway:
        yield gateway


def call(gw: Gateway, who: str, method: str, path: str, body: Any = None) -> requests.Response:
    return requests.request(
        method,
        gw.url + LOCKS + path,
        json=body,
        headers={"Authorization": f"Bearer {gw.token(who)}"},
        timeout=15,
    )


def alice_status(gw: Gateway) -> int:
    return gw.get("/api/projects/proj-1/tasks/task-1/records", sub="alice").status_code


def wait_for(gw: Gateway, status: int) -> None:
    """Until every worker answers alice with `status` (locks reach each within a second)."""
    deadline = time.monotonic() + 5
    while alice_status(gw) != status and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    answer = gw.get("/api/projects/proj-1/tasks/task-1/records", sub="alice")
    assert answer.status_code == status, answer.text


def test_api_vendor_lift_needs_a_second_admin(gw: Gateway) -> None:
    lock = call(gw, "ann", "POST", "", {"kind": "vendor", "target": "acme", "reason": "breach"})
    assert lock.status_code == 201, lock.text
    lock_id = lock.json()["id"]
    wait_for(gw, 403)
    asked = call(gw, "ann", "POST", f"/{lock_id}/lift", {"reason": "vendor cleared"})
    assert asked.status_code == 202, asked.text
    request = asked.json()["lift_request"]
    assert request["state"] == "pending" and request["requested_by"] == "lab-idp:ann"
    # Nothing is lifted yet: acme's contractors stay cut off.
    assert call(gw, "ann", "GET", f"/{lock_id}").json()["state"] == "active"
    assert alice_status(gw) == 403
    twice = call(gw, "ann", "POST", f"/{lock_id}/lift", {"reason": "again"})
    assert twice.status_code == 409
    pending = call(gw, "adam", "GET", "/lift-requests").json()["lift_requests"]
    assert [p["id"] for p in pending] == [request["id"]]
    own = call(gw, "ann", "POST", f"/lift-requests/{request['id']}/approve", {})
    assert own.status_code == 403 and "second admin" in own.json()["message"]
    approved = call(gw, "adam", "POST", f"/lift-requests/{request['id']}/approve", {})
    assert approved.status_code == 200, approved.text
    assert approved.json()["state"] == "lifted"
    assert approved.json()["lifted_by"] == "lab-idp:adam"
    wait_for(gw, 200)
    again = call(gw, "adam", "POST", f"/lift-requests/{request['id']}/approve", {})
    assert again.status_code == 409
    steps = gw.db.rows(
        "SELECT actor, action FROM admin_events WHERE action LIKE 'lock.lift%' ORDER BY id"
    )
    assert [(s.actor, s.action) for s in steps][-3:] == [
        ("lab-idp:ann", "lock.lift_requested"),
        ("lab-idp:adam", "lock.lift_approved"),
        ("lab-idp:adam", "lock.lift"),
    ]


def test_contractor_locks_lift_with_one_admin(gw: Gateway) -> None:
    lock = call(
        gw, "ann", "POST", "", {"kind": "contractor", "target": "acme-idp:alice", "reason": "x"}
    )
    lifted = call(gw, "ann", "POST", f"/{lock.json()['id']}/lift", {"reason": "done"})
    assert lifted.status_code == 200 and lifted.json()["state"] == "lifted"


def cli(gw: Gateway, *args: str) -> Any:
    return gw.cli(*args, check=False)


def test_cli_vendor_lift_needs_a_second_admin(gw: Gateway) -> None:
    made = cli(gw, "lock", "vendor", "acme", "--reason", "drill", "--actor", "ops-1", "--json")
    lock_id = json.loads(made.stdout)["id"]
    asked = cli(gw, "unlock", str(lock_id), "--reason", "drill over", "--actor", "ops-1", "--json")
    assert asked.returncode == 0, asked.stderr
    request = json.loads(asked.stdout)["lift_request"]
    text = cli(gw, "locks")
    assert f"{lock_id} " in text.stdout and "active" in text.stdout
    own = cli(gw, "unlock", "--approve", str(request["id"]), "--actor", "ops-1")
    assert own.returncode == 1 and "second admin" in own.stderr
    both = cli(gw, "unlock", str(lock_id), "--approve", str(request["id"]), "--actor", "ops-2")
    assert both.returncode == 1 and "not both" in both.stderr
    done = cli(gw, "unlock", "--approve", str(request["id"]), "--actor", "ops-2")
    assert done.returncode == 0, done.stderr
    assert f"lock {lock_id} lifted" in done.stdout
    wait_for(gw, 200)


def test_an_expired_request_cannot_be_approved(gw: Gateway) -> None:
    made = cli(gw, "lock", "issuer", "acme-idp", "--reason", "idp breach", "--json")
    lock_id = json.loads(made.stdout)["id"]
    asked = cli(gw, "unlock", str(lock_id), "--reason", "fixed", "--actor", "ops-1", "--json")
    request_id = json.loads(asked.stdout)["lift_request"]["id"]
    with gw.db.engine.begin() as connection:
        connection.execute(
            text("UPDATE lift_requests SET expires_at = created_at WHERE id = :id"),
            {"id": request_id},
        )
    late = cli(gw, "unlock", "--approve", str(request_id), "--actor", "ops-2")
    assert late.returncode == 1 and "expired" in late.stderr
    # A new request can be made once the old one expired, and approved.
    fresh = cli(gw, "unlock", str(lock_id), "--reason", "fixed", "--actor", "ops-1", "--json")
    fresh_id = json.loads(fresh.stdout)["lift_request"]["id"]
    assert cli(gw, "unlock", "--approve", str(fresh_id), "--actor", "ops-2").returncode == 0
