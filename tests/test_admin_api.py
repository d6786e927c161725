"""The HTTP admin API (/_gateway/admin/) end to end: a real gateway under gunicorn.

Every test that changes the policy puts the original rules back (through the apply
endpoint) before the next one runs: other test modules share this gateway and database and
expect conftest.TEST_POLICY. The names used here are ones those modules do not depend on:
alice has no grant on proj-3, bob none on proj-3 either.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import requests
from flask import Flask

from gateway.api.openapi import OPENAPI_PATH, REQUESTS, document
from tests.conftest import Gateway

API = "/_gateway/admin/policy"
ADMIN = "ann"  # lab-idp (roles trusted), role admin
ACTOR = "lab-idp:ann"
PROPAGATION_BOUND = 2.0

ALICE_P3 = "/api/projects/proj-3/tasks/task-1/records?limit=1"
ALICE_P3_T2 = "/api/projects/proj-3/tasks/task-2/records?limit=1"
ALICE_GRANT = "p, acme-idp:alice, proj-3, *, read, allow"

# Every operation the API has: (method, path under /_gateway/admin/policy).
OPERATIONS = [
    ("get", ""),
    ("post", "/grants"),
    ("post", "/denies"),
    ("post", "/roles"),
    ("post", "/revocations"),
    ("post", "/apply"),
    ("post", "/rollback"),
    ("get", "/versions"),
    ("get", "/versions/1"),
    ("get", "/diff?from=1&to=1"),
    ("get", "/explain?sub=acme-idp:alice&vendor=acme&project=proj-1&action=read"),
]


class AdminClient:
    def __init__(self, gateway: Gateway, sub: str | None = ADMIN) -> None:
        self.gateway = gateway
        self.session = requests.Session()
        if sub is not None:
            self.session.headers["Authorization"] = f"Bearer {gateway.token(sub)}"

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.session.get(self.gateway.url + API + path, params=params, timeout=30)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        if body is not None:
            kwargs["json"] = body
        return self.session.post(self.gateway.url + API + path, timeout=60, **kwargs)

    def policy(self, **params: Any) -> dict[str, Any]:
        response = self.get("", **params)
        assert response.status_code == 200, response.text
        return response.json()

    @property
    def version(self) -> int:
        return self.policy()["version"]

    def lines(self) -> list[str]:
        return sorted(rule["line"] for rule in self.policy()["rules"])

    def write(self, path: str, status: int = 201, **body: Any) -> dict[str, Any]:
        body.setdefault("reason", "admin api test")
        body.setdefault("base_version", self.version)
        response = self.post(path, body)
        assert response.status_code == status, response.text
        return response.json()


@pytest.fixture
def admin(gateway: Gateway) -> AdminClient:
    return AdminClient(gateway)


@pytest.fixture
def restore(admin: AdminClient) -> Iterator[list[str]]:
    """Put the rules back as they were, through the API, and let every worker see it."""
    original = admin.lines()
    yield original
    if admin.lines() != original:
        admin.write(
            "/apply",
            policy="\n".join(original) + "\n",
            reason="admin api test: restore",
            confirm_removals=True,
        )
        time.sleep(1.5)  # the version poll runs every 0.5 s in the test config


def status_of(gateway: Gateway, path: str, sub: str) -> int:
    return gateway.get(path, sub).status_code


def wait_for(gateway: Gateway, path: str, sub: str, expected: int) -> float:
    """Seconds until `path` answers `expected` three times running (workers are random)."""
    start = time.monotonic()
    streak = 0
    while time.monotonic() - start < PROPAGATION_BOUND + 3:
        streak = streak + 1 if status_of(gateway, path, sub) == expected else 0
        if streak >= 3:
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"{path} never answered {expected} for {sub}")


def admin_events(gateway: Gateway, version: int) -> list:
    return gateway.db.rows(
        "SELECT actor, action, reason, before, after FROM admin_events WHERE policy_version = :v",
        v=version,
    )


# --- grants, revocations, denies, time boxes ------------------------------------------------


def test_grant_then_revoke_reaches_the_data_path_and_is_recorded(
    gateway: Gateway, admin: AdminClient, restore: list[str]
) -> None:
    assert status_of(gateway, ALICE_P3, "alice") == 403
    before = admin.version
    granted = admin.write(
        "/grants",
        subject="acme-idp:alice",
        project="proj-3",
        action="read",
        reason="ticket-101: alice helps on proj-3",
        base_version=before,
    )
    assert granted == {"version": before + 1, "added": [ALICE_GRANT], "removed": []}
    assert wait_for(gateway, ALICE_P3, "alice", 200) <= PROPAGATION_BOUND
    listed = admin.policy(subject="acme-idp:alice", project="proj-3")
    assert listed["version"] == before + 1
    assert listed["rules"] == [
        {
            "line": ALICE_GRANT,
            "ptype": "p",
            "subject": "acme-idp:alice",
            "project": "proj-3",
            "task": "*",
            "action": "read",
            "role": None,
            "effect": "allow",
            "not_before": None,
            "not_after": None,
        }
    ]

    revoked = admin.write(
        "/revocations", 200, rules=[ALICE_GRANT], reason="ticket-101 done", base_version=before + 1
    )
    assert revoked == {"version": before + 2, "added": [], "removed": [ALICE_GRANT]}
    assert wait_for(gateway, ALICE_P3, "alice", 403) <= PROPAGATION_BOUND
    assert admin.lines() == restore

    (grant_event,) = admin_events(gateway, before + 1)
    assert (grant_event.actor, grant_event.action) == (ACTOR, "policy.grant")
    assert grant_event.reason == "ticket-101: alice helps on proj-3"
    assert orjson.loads(grant_event.before) == {"removed": []}
    assert orjson.loads(grant_event.after) == {"added": [ALICE_GRANT]}
    (revoke_event,) = admin_events(gateway, before + 2)
    assert (revoke_event.actor, revoke_event.action) == (ACTOR, "policy.revoke")
    assert revoke_event.reason == "ticket-101 done"
    assert orjson.loads(revoke_event.before) == {"removed": [ALICE_GRANT]}
    assert orjson.loads(revoke_event.after) == {"added": []}

    versions = admin.get("/versions", limit=2).json()["versions"]
    assert [(v["version"], v["actor"]) for v in versions] == [
        (before + 2, ACTOR),
        (before + 1, ACTOR),
    ]
    assert all(datetime.fromisoformat(v["created_at"]).tzinfo for v in versions)
    one = admin.get(f"/versions/{before + 1}").json()
    assert (one["reason"], one["added"], one["removed"]) == (
        "ticket-101: alice helps on proj-3",
        [ALICE_GRANT],
        [],
    )
    diff = admin.get("/diff", **{"from": before, "to": before + 1}).json()
    assert diff == {"from": before, "to": before + 1, "added": [ALICE_GRANT], "removed": []}


def test_vendor_wide_role_grant(gateway: Gateway, admin: AdminClient, restore: list[str]) -> None:
    assert status_of(gateway, ALICE_P3, "bob") == 403
    role = admin.write(
        "/roles", project="proj-3", role="p3-reader", actions=["read"], reason="new role"
    )
    assert role["added"] == ["p, role:p3-reader, proj-3, *, read, allow"]
    granted = admin.write(
        "/grants", vendor="acme", project="proj-3", role="p3-reader", reason="acme on proj-3"
    )
    assert granted["added"] == ["g, vendor:acme, role:p3-reader, proj-3"]
    for sub in ("alice", "bob"):
        assert wait_for(gateway, ALICE_P3, sub, 200) <= PROPAGATION_BOUND
    listed = admin.policy(vendor="acme", project="proj-3")["rules"]
    assert [(r["ptype"], r["role"], r["task"]) for r in listed] == [("g", "role:p3-reader", None)]
    # The role gives read only: annotating stays forbidden.
    explained = admin.get(
        "/explain",
        sub="acme-idp:bob",
        vendor="acme",
        project="proj-3",
        task="task-1",
        action="annotate",
    ).json()
    assert explained["decision"] == "deny"


def test_deny_overrides_a_vendor_grant(
    gateway: Gateway, admin: AdminClient, restore: list[str]
) -> None:
    admin.write("/grants", vendor="acme", project="proj-3", action="read", reason="acme reads")
    denied = admin.write(
        "/denies",
        subject="acme-idp:alice",
        project="proj-3",
        task="task-1",
        action="read",
        reason="alice must not see task-1",
    )
    assert denied["added"] == ["p, acme-idp:alice, proj-3, task-1, read, deny"]
    assert wait_for(gateway, ALICE_P3, "bob", 200) <= PROPAGATION_BOUND
    assert wait_for(gateway, ALICE_P3_T2, "alice", 200) <= PROPAGATION_BOUND
    assert wait_for(gateway, ALICE_P3, "alice", 403) <= PROPAGATION_BOUND
    explained = admin.get(
        "/explain", sub="acme-idp:alice", vendor="acme", project="proj-3", task="task-1",
        action="read",
    ).json()  # fmt: skip
    assert explained["decision"] == "deny"
    assert explained["allow_rules"] == ["p, vendor:acme, proj-3, *, read, allow"]
    assert explained["deny_rules"] == ["p, acme-idp:alice, proj-3, task-1, read, deny"]


def test_time_boxed_grant_expires_on_its_own(
    gateway: Gateway, admin: AdminClient, restore: list[str]
) -> None:
    until = datetime.now(UTC) + timedelta(seconds=3)
    granted = admin.write(
        "/grants",
        subject="acme-idp:alice",
        project="proj-3",
        action="read",
        until=until.isoformat(),
        reason="three seconds of access",
    )
    (rule,) = admin.policy(subject="acme-idp:alice", project="proj-3")["rules"]
    assert granted["added"] == [rule["line"]]
    assert rule["not_before"] is None
    expiry = datetime.fromisoformat(rule["not_after"]).timestamp()
    assert until.timestamp() - 1 < expiry <= until.timestamp()  # kept to the second
    samples: list[tuple[float, int]] = []
    while time.time() < expiry + 2.0:
        started = time.time()
        samples.append((started, status_of(gateway, ALICE_P3, "alice")))
        time.sleep(0.05)
    assert any(status == 200 for when, status in samples if when < expiry), samples
    # Nobody acted: every request started a second after the expiry is refused.
    late = [status for when, status in samples if when >= expiry + 1.0]
    assert len(late) >= 5 and set(late) == {403}, samples
    assert all(status == 403 for when, status in samples if when >= expiry + 0.2), samples


def test_dry_run_shows_the_diff_and_changes_nothing(
    gateway: Gateway, admin: AdminClient, restore: list[str]
) -> None:
    before = admin.version
    result = admin.write(
        "/grants", 200, subject="acme-idp:alice", project="proj-3", action="read", dry_run=True
    )
    assert result == {"version": None, "added": [ALICE_GRANT], "removed": []}
    wanted = "\n".join([*restore, ALICE_GRANT])
    applied = admin.write("/apply", 200, policy=wanted, dry_run=True)
    assert applied == {"version": None, "added": [ALICE_GRANT], "removed": []}
    assert (admin.version, admin.lines()) == (before, restore)
    assert status_of(gateway, ALICE_P3, "alice") == 403


def test_grant_on_an_unknown_project_names_the_near_match(admin: AdminClient) -> None:
    body = {"subject": "acme-idp:bob", "project": "proj-l", "action": "read", "reason": "x"}
    typo = admin.post("/grants", {**body, "base_version": admin.version})
    assert typo.status_code == 400
    assert "did you mean" in typo.json()["fields"]["project"]
    assert "'proj-1'" in typo.json()["fields"]["project"]
    meant = admin.write("/grants", 200, **body, new_project=True, dry_run=True)
    assert meant["added"] == ["p, acme-idp:bob, proj-l, *, read, allow"]


def test_apply_that_wipes_or_guts_the_policy_needs_intent(
    gateway: Gateway, admin: AdminClient, restore: list[str]
) -> None:
    start = admin.version
    empty = admin.post("/apply", {"policy": "", "reason": "oops", "base_version": start})
    assert empty.status_code == 400
    assert "holds no rules" in empty.json()["fields"]["policy"]
    half = "\n".join(restore[: len(restore) // 2])
    gutted = admin.post("/apply", {"policy": half, "reason": "oops", "base_version": start})
    assert gutted.status_code == 400
    assert "confirm" in gutted.json()["fields"]["confirm_removals"]
    # A dry run shows what would be confirmed; nothing was stored meanwhile.
    preview = admin.write("/apply", 200, policy=half, dry_run=True)
    assert len(preview["removed"]) == len(restore) - len(restore) // 2
    assert admin.version == start
    done = admin.write("/apply", policy=half, reason="split policy", confirm_removals=True)
    assert done["version"] == start + 1


def test_apply_and_rollback(gateway: Gateway, admin: AdminClient, restore: list[str]) -> None:
    start = admin.version
    wanted = "# reviewed in PR 42\n" + "\n".join([*restore, ALICE_GRANT]) + "\n"
    applied = admin.write("/apply", policy=wanted, reason="PR 42")
    assert applied == {"version": start + 1, "added": [ALICE_GRANT], "removed": []}
    assert wait_for(gateway, ALICE_P3, "alice", 200) <= PROPAGATION_BOUND

    rolled = admin.write("/rollback", version=start, reason="PR 42 was wrong")
    assert rolled == {"version": start + 2, "added": [], "removed": [ALICE_GRANT]}
    assert admin.lines() == restore
    assert wait_for(gateway, ALICE_P3, "alice", 403) <= PROPAGATION_BOUND
    (event,) = admin_events(gateway, start + 2)
    assert (event.actor, event.action) == (ACTOR, "policy.rollback")
    assert event.reason == f"rollback to {start}: PR 42 was wrong"
    assert admin.get(f"/versions/{start + 2}").json()["removed"] == [ALICE_GRANT]


def test_stale_base_version_is_409_and_changes_nothing(
    gateway: Gateway, admin: AdminClient, restore: list[str]
) -> None:
    current = admin.version
    body = {
        "subject": "acme-idp:alice",
        "project": "proj-3",
        "action": "read",
        "reason": "racing admin",
    }
    for stale in (current - 1, current + 1, 0):
        response = admin.post("/grants", {**body, "base_version": stale})
        assert response.status_code == 409, response.text
        assert response.json()["error"] == "stale_version"
        assert response.json()["current_version"] == current
    # Two admins edit from the same version: the first wins, the second must rebase.
    first = admin.post("/grants", {**body, "base_version": current})
    assert first.status_code == 201, first.text
    second = admin.post(
        "/denies", {**body, "task": "task-2", "action": "read", "base_version": current}
    )
    assert second.status_code == 409
    assert second.json()["current_version"] == current + 1
    # Every kind of write checks it.
    for path, extra in [
        ("/roles", {"project": "proj-3", "role": "r", "actions": ["read"]}),
        ("/revocations", {"rules": [ALICE_GRANT]}),
        ("/apply", {"policy": "\n".join(restore)}),
        ("/rollback", {"version": current}),
    ]:
        response = admin.post(path, {**extra, "reason": "stale", "base_version": current})
        assert response.status_code == 409, (path, response.text)
    assert admin.version == current + 1
    assert admin.lines() == sorted([*restore, ALICE_GRANT])


# --- validation ------------------------------------------------------------------------------

CURRENT = object()  # replaced by the current version when the request is sent
_GRANT = {
    "subject": "acme-idp:alice",
    "project": "proj-3",
    "action": "read",
    "reason": "validation test",
    "base_version": CURRENT,
}
_PAST = "2001-01-01T00:00:00Z"


def _without(body: dict, *names: str) -> dict:
    return {k: v for k, v in body.items() if k not in names}


INVALID_BODIES = [
    # (endpoint, body, the field the 400 must name)
    ("/grants", _without(_GRANT, "reason"), "reason"),
    ("/grants", {**_GRANT, "reason": "   "}, "reason"),
    ("/grants", {**_GRANT, "reason": "x" * 5000}, "reason"),
    ("/grants", {**_GRANT, "reason": None}, "reason"),
    ("/grants", _without(_GRANT, "base_version"), "base_version"),
    ("/grants", {**_GRANT, "base_version": "7"}, "base_version"),
    ("/grants", {**_GRANT, "base_version": -1}, "base_version"),
    ("/grants", {**_GRANT, "base_version": 2**40}, "base_version"),
    ("/grants", {**_GRANT, "base_version": 1.5}, "base_version"),
    ("/grants", {**_GRANT, "base_version": True}, "base_version"),
    ("/grants", {**_GRANT, "dry_run": "yes"}, "dry_run"),
    ("/grants", {**_GRANT, "colour": "blue"}, "colour"),
    ("/grants", {**_GRANT, "vendor": "acme"}, "subject"),
    ("/grants", _without(_GRANT, "subject"), "subject"),
    ("/grants", {**_GRANT, "role": "annotator"}, "role"),
    ("/grants", _without(_GRANT, "action"), "role"),
    ("/grants", _without(_GRANT, "project"), "project"),
    ("/grants", {**_GRANT, "project": None}, "project"),
    ("/grants", {**_GRANT, "project": 3}, "project"),
    ("/grants", {**_GRANT, "project": ["proj-3"]}, "project"),
    ("/grants", {**_GRANT, "project": "p" * 100_000}, "project"),
    ("/grants", {**_GRANT, "project": "proj 3"}, "project"),
    ("/grants", {**_GRANT, "project": "proj-3\n"}, "project"),
    ("/grants", {**_GRANT, "project": ""}, "project"),
    ("/grants", {**_GRANT, "task": "task-1/../x"}, "task"),
    ("/grants", {**_GRANT, "task": "*task"}, "task"),
    ("/grants", {**_GRANT, "subject": "acme-idp:al ice"}, "subject"),
    ("/grants", _without({**_GRANT, "vendor": "acme corp"}, "subject"), "vendor"),
    ("/grants", {**_GRANT, "from": "yesterday"}, "from"),
    ("/grants", {**_GRANT, "from": 1700000000}, "from"),
    ("/grants", {**_GRANT, "from": "0001-01-01T00:00:00+14:00"}, "from"),
    ("/grants", {**_GRANT, "until": "2099-01-01T00:00:00"}, "until"),  # no offset
    ("/grants", {**_GRANT, "until": _PAST}, "until"),
    ("/grants", {**_GRANT, "from": "2099-01-02T00:00:00Z", "until": "2099-01-01T00:00Z"}, "until"),
    # Refused by the policy service (PolicyValidationError), still named by field:
    ("/grants", {**_GRANT, "action": "delete"}, "action"),
    ("/grants", {**_GRANT, "subject": "nobody-idp:alice"}, "subject"),
    ("/grants", {**_GRANT, "subject": "alice"}, "subject"),
    ("/grants", {**_without(_GRANT, "action"), "role": "ghost"}, "role"),
    ("/grants", {**_without(_GRANT, "action"), "role": "ghost", "task": "task-1"}, "role"),
    ("/denies", _without(_GRANT, "action"), "action"),
    ("/denies", {**_GRANT, "role": "annotator"}, "role"),
    ("/denies", {**_GRANT, "until": "soon"}, "until"),
    ("/denies", {**_GRANT, "action": "fly"}, "action"),
    ("/roles", {"project": "proj-3", "role": "r", "reason": "x", "base_version": CURRENT},
     "actions"),
    ("/roles", {"project": "proj-3", "role": "r", "actions": [], "reason": "x",
                "base_version": CURRENT}, "actions"),
    ("/roles", {"project": "proj-3", "role": "r", "actions": "read", "reason": "x",
                "base_version": CURRENT}, "actions"),
    ("/roles", {"project": "proj-3", "role": "r", "actions": ["read", 5], "reason": "x",
                "base_version": CURRENT}, "actions[1]"),
    ("/roles", {"project": "proj-3", "role": "r", "actions": ["teleport"], "reason": "x",
                "base_version": CURRENT}, "action"),
    ("/revocations", {"rules": [], "reason": "x", "base_version": CURRENT}, "rules"),
    ("/revocations", {"rules": ALICE_GRANT, "reason": "x", "base_version": CURRENT}, "rules"),
    ("/revocations", {"rules": [ALICE_GRANT], "reason": "x", "base_version": CURRENT}, "rules"),
    ("/revocations", {"rules": ["p, a:b, proj-1, *, read, allow\np, c:d, proj-1, *, read, allow"],
                      "reason": "x", "base_version": CURRENT}, "rules[0]"),
    ("/revocations", {"rules": ["p, only, three"], "reason": "x", "base_version": CURRENT},
     "rules"),
    ("/revocations", {"rules": ["p, lab-idp:carol, proj-3, *, read, allow, ../0000-01-01"],
                      "reason": "x", "base_version": CURRENT}, "rules"),
    ("/apply", {"policy": 5, "reason": "x", "base_version": CURRENT}, "policy"),
    ("/apply", {"policy": "q, a, b", "reason": "x", "base_version": CURRENT}, "policy"),
    ("/apply", {"policy": "p, a:b, proj-1, *, read, allow, ../0001-01-01T00:00:00+14:00",
                "reason": "x", "base_version": CURRENT}, "policy"),
    ("/apply", {"policy": "p, a:b, proj-1, *, read, allow, 2030-01-01T00:00:00Z/2020-01-01Z",
                "reason": "x", "base_version": CURRENT}, "policy"),
    ("/apply", {"policy": "p, a:b, proj-1, *, read, allow", "reason": "x",
                "base_version": CURRENT}, "subject"),
    ("/apply", {"reason": "x", "base_version": CURRENT}, "policy"),
    ("/rollback", {"version": 0, "reason": "x", "base_version": CURRENT}, "version"),
    ("/rollback", {"version": "1", "reason": "x", "base_version": CURRENT}, "version"),
    ("/rollback", {"version": 99_999_999, "reason": "x", "base_version": CURRENT}, "version"),
    ("/rollback", {"version": CURRENT, "reason": "x", "base_version": CURRENT}, "version"),
]  # fmt: skip


def _fill(body: Any, version: int) -> Any:
    if body is CURRENT:
        return version
    if isinstance(body, dict):
        return {k: _fill(v, version) for k, v in body.items()}
    return body


def assert_invalid(response: requests.Response, field: str) -> dict:
    assert response.status_code == 400, response.text[:500]
    assert response.headers["Content-Type"] == "application/json"
    payload = response.json()
    assert payload["error"] == "invalid_request"
    assert field in payload["fields"], payload
    assert payload["fields"][field]
    assert field in payload["message"]
    return payload


@pytest.mark.parametrize(("path", "body", "field"), INVALID_BODIES)
def test_invalid_bodies_are_400_naming_the_field(
    admin: AdminClient, path: str, body: dict, field: str
) -> None:
    before = admin.version
    assert_invalid(admin.post(path, _fill(body, before)), field)
    assert admin.version == before


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"{", b'{"a": NaN}', b"null", b"[]", b'"grant"', b"42", b"\xff\xfe\x00",
     b"[" * 5000 + b"]" * 5000, b'{"subject": "x", "subject": 1}'],
)  # fmt: skip
def test_malformed_json_is_400(admin: AdminClient, raw: bytes) -> None:
    for path in ("/grants", "/denies", "/roles", "/revocations", "/apply", "/rollback"):
        response = admin.post(path, data=raw, headers={"Content-Type": "application/json"})
        payload = response.json()
        assert response.status_code == 400, (path, response.text[:300])
        assert payload["error"] == "invalid_request"
        assert payload["fields"], payload


def test_body_must_be_sent_as_json(admin: AdminClient) -> None:
    body = orjson.dumps(_fill(_GRANT, admin.version))
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded"):
        headers = {"Content-Type": content_type} if content_type else {}
        response = admin.post("/grants", data=body, headers=headers)
        assert_invalid(response, "body")


def test_oversized_body_is_413(admin: AdminClient) -> None:
    body = {**_fill(_GRANT, admin.version), "reason": "x" * (2 * 1024 * 1024)}
    response = admin.post("/grants", body)
    assert response.status_code == 413
    assert response.json()["error"] == "request_entity_too_large"
    # Sent chunked, without a Content-Length: still bounded, and a small one still works.
    json_header = {"Content-Type": "application/json"}
    chunks = iter([orjson.dumps(body)[:-1], b" " * (1024 * 1024), b"}"])
    response = admin.post("/grants", data=chunks, headers=json_header)
    assert response.status_code == 413
    small = orjson.dumps({**_fill(_GRANT, admin.version), "dry_run": True})
    response = admin.post("/grants", data=iter([small[:10], small[10:]]), headers=json_header)
    assert response.status_code == 200, response.text
    assert response.json()["version"] is None


def test_fuzzed_fields_never_500(admin: AdminClient, restore: list[str]) -> None:
    """Swap each field of a valid (dry-run or stale) body for junk: always a JSON 4xx/200."""
    version = admin.version
    junk: list[Any] = [None, True, 0, -1, 1e308, 2**63, "", "x" * 70_000, "\x00", "é" * 300,
                       [], [None], {}, {"a": {"b": []}}, "*", "role:", "p, a, b", "../..",
                       "2026-13-45T99:99:99Z", "vendor:acme", ":"]  # fmt: skip
    bodies = {
        "/grants": {**_GRANT, "dry_run": True, "base_version": version},
        "/denies": {**_GRANT, "dry_run": True, "base_version": version},
        "/roles": {"project": "proj-3", "role": "r", "actions": ["read"], "reason": "x",
                   "dry_run": True, "base_version": version},
        "/revocations": {"rules": [restore[0]], "reason": "x", "dry_run": True,
                         "base_version": version},
        "/apply": {"policy": "\n".join(restore), "reason": "x", "dry_run": True,
                   "base_version": version},
        "/rollback": {"version": 1, "reason": "x", "base_version": version - 1},  # stale
    }  # fmt: skip
    for path, body in bodies.items():
        for name in body:
            if name == "dry_run":
                continue
            for value in junk:
                response = admin.post(path, {**body, name: value})
                assert response.status_code in (200, 400, 409), (path, name, response.text[:300])
                assert response.headers["Content-Type"] == "application/json"
                if response.status_code == 400:
                    assert response.json()["fields"], response.text
    assert admin.version == version


QUERY_CASES = [
    ("/versions", {"limit": "abc"}, "limit"),
    ("/versions", {"limit": "0"}, "limit"),
    ("/versions", {"limit": "-5"}, "limit"),
    ("/versions", {"limit": "99999999999999999999999"}, "limit"),
    ("/versions", {"limit": "1.5"}, "limit"),
    ("/versions", {"limit": ["1", "2"]}, "limit"),
    ("/versions", {"limt": "5"}, "limt"),
    ("/diff", {"from": "1"}, "to"),
    ("/diff", {"from": "x", "to": "1"}, "from"),
    ("/diff", {"from": "1", "to": "-1"}, "to"),
    ("", {"project": "proj 1"}, "project"),
    ("", {"vendor": ""}, "vendor"),
    ("", {"projects": "proj-1"}, "projects"),
    ("/explain", {"vendor": "acme", "project": "proj-1", "action": "read"}, "sub"),
    ("/explain", {"sub": "acme-idp:alice", "vendor": "acme", "project": "proj-1"}, "action"),
    ("/explain", {"sub": "acme-idp:alice", "vendor": "acme", "project": "proj-1",
                  "action": "read", "task": "a b"}, "task"),
    ("/explain", {"sub": "x" * 3000, "vendor": "acme", "project": "proj-1",
                  "action": "read"}, "sub"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "params", "field"), QUERY_CASES)
def test_bad_query_parameters_are_400(
    admin: AdminClient, path: str, params: dict, field: str
) -> None:
    assert_invalid(admin.get(path, **params), field)


@pytest.mark.parametrize(
    "path",
    ["/versions/99999999", "/versions/99999999999999999999999999", "/versions/abc",
     "/diff?from=1&to=99999999", "/nope"],
)  # fmt: skip
def test_unknown_versions_are_404_json(admin: AdminClient, path: str) -> None:
    response = admin.session.get(admin.gateway.url + API + path, timeout=10)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


# --- who may administer -------------------------------------------------------------------


def _call(gateway: Gateway, method: str, path: str, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    body = {"reason": "should never apply", "base_version": 0}
    return requests.request(
        method, gateway.url + API + path, json=body, headers=headers, timeout=15
    )


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_only_admins_may_call(gateway: Gateway, method: str, path: str) -> None:
    # A contractor, an auditor, and an "admin" from a vendor IdP not trusted for roles.
    for sub in ("alice", "carol", "audrey", "admin-ann"):
        response = _call(gateway, method, path, gateway.token(sub))
        assert response.status_code == 403, (sub, response.text)
        assert response.json()["error"] == "forbidden"
    for token in (None, "not-a-token", "a.b.c"):
        response = _call(gateway, method, path, token)
        assert response.status_code == 401, (token, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["error"]


# --- explain ------------------------------------------------------------------------------

EXPLAIN_CASES = [
    # (user, policy subject, vendor, project, task, expected)
    ("alice", "acme-idp:alice", "acme", "proj-1", "task-1", "allow"),
    ("bob", "acme-idp:bob", "acme", "proj-1", "task-1", "allow"),
    ("bob", "acme-idp:bob", "acme", "proj-1", "task-2", "deny"),
    ("alice", "acme-idp:alice", "acme", "proj-2", "task-1", "allow"),
    ("alice", "acme-idp:alice", "acme", "proj-2", "task-2", "deny"),
    ("alice", "acme-idp:alice", "acme", "proj-3", "task-1", "deny"),
    ("carol", "lab-idp:carol", "globex", "proj-3", "task-2", "allow"),
    ("carol", "lab-idp:carol", "globex", "proj-1", "task-1", "deny"),
]


@pytest.mark.parametrize(("user", "sub", "vendor", "project", "task", "expected"), EXPLAIN_CASES)
def test_explain_agrees_with_the_real_decision(
    gateway: Gateway,
    admin: AdminClient,
    user: str,
    sub: str,
    vendor: str,
    project: str,
    task: str,
    expected: str,
) -> None:
    explained = admin.get(
        "/explain", sub=sub, vendor=vendor, project=project, task=task, action="read"
    ).json()
    real = status_of(gateway, f"/api/projects/{project}/tasks/{task}/records?limit=1", user)
    assert explained["decision"] == expected
    assert real == (200 if expected == "allow" else 403)
    assert explained["version"] == admin.version
    if expected == "allow":
        assert explained["allow_rules"] and not explained["deny_rules"]
    if sub == "acme-idp:bob" and task == "task-2":
        assert explained["deny_rules"] == ["p, acme-idp:bob, proj-1, task-2, read, deny"]
    if project == "proj-1" and expected == "allow":
        assert explained["role_links"] == ["g, vendor:acme, role:annotator, proj-1"]


# --- the OpenAPI document -----------------------------------------------------------------


def test_openapi_document_is_served_and_lists_every_endpoint(gateway: Gateway) -> None:
    response = requests.get(gateway.url + OPENAPI_PATH, timeout=10)
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.1")
    bearer = doc["components"]["securitySchemes"]["bearer"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    assert doc["security"] == [{"bearer": []}]
    for method, path in OPERATIONS:
        template = re.sub(r"/\d+$", "/{version}", path.split("?")[0])
        operation = doc["paths"][API + template][method]
        codes = set(operation["responses"])
        assert {"400", "401", "403"} <= codes
        if method == "post":
            assert {"409"} <= codes and codes & {"200", "201"}
            ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            name = ref.rsplit("/", 1)[1]
            assert doc["components"]["schemas"][name] == REQUESTS[name]
            assert REQUESTS[name]["additionalProperties"] is False
    assert "201" in doc["paths"][API + "/grants"]["post"]["responses"]
    explain_params = {p["name"] for p in doc["paths"][API + "/explain"]["get"]["parameters"]}
    assert explain_params == {"sub", "vendor", "project", "task", "action"}


def test_openapi_document_describes_exactly_the_routes() -> None:
    # The gateway's own routes, as its app registers them (the catch-all that answers 404
    # for anything else under /_gateway/ aside).
    from gateway.api import register_blueprints

    app = Flask(__name__)
    register_blueprints(app)
    routes = {
        (re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/_gateway/") and rule.endpoint != "health.unknown"
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    documented = {(path, method) for path, ops in document()["paths"].items() for method in ops}
    assert routes == documented
    # Every $ref resolves.
    text = orjson.dumps(document()).decode()
    for ref in set(re.findall(r'"\$ref":"#/components/(\w+)/(\w+)"', text)):
        assert ref[1] in document()["components"][ref[0]], ref
