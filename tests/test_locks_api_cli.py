"""The kill switch's HTTP API (/_gateway/admin/locks) and CLI (`gateway lock`, `unlock`,
`locks`) end to end: a real gateway under gunicorn, real tokens, the shared database.

Every lock made here is lifted again (try/finally): the other test modules share this
gateway and database and expect acme's contractors to get through.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from gateway.cli import main as gateway_main
from gateway.db.session import make_engine
from gateway.lockout import lift_lock, list_locks
from tests.conftest import UPSTREAM_TOKEN, Gateway
from tests.support.oidc_client import obtain_tokens

API = "/_gateway/admin/locks"
ADMIN = "ann"  # lab-idp, trusted for roles, role admin
ACTOR = "lab-idp:ann"
BOUND = 1.0  # seconds from a lock's (or lift's) commit to every worker enforcing it
RECORDS = "/api/projects/proj-1/tasks/task-1/records?limit=2"


@pytest.fixture(scope="module")
def db(gateway: Gateway) -> Iterator[Any]:
    engine = make_engine(gateway.db.url)
    yield engine
    engine.dispose()


@pytest.fixture
def made(db: Any) -> Iterator[list[int]]:
    """Ids of locks a test makes; whatever is still in force afterwards is lifted."""
    ids: list[int] = []
    yield ids
    active = {lock["id"] for lock in list_locks(db)}
    for lock_id in ids:
        if lock_id in active:
            lift_lock(db, lock_id, actor="test", reason="test cleanup")
    if ids:
        time.sleep(BOUND)


class Client:
    def __init__(self, gateway: Gateway, token: str | None) -> None:
        self.url = gateway.url + API
        self.session = requests.Session()
        if token is not None:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def get(self, path: str = "", **params: Any) -> requests.Response:
        return self.session.get(self.url + path, params=params, timeout=30)

    def post(self, path: str = "", body: Any = None, **kwargs: Any) -> requests.Response:
        if body is not None:
            kwargs["json"] = body
        return self.session.post(self.url + path, timeout=60, **kwargs)


@pytest.fixture
def admin(gateway: Gateway) -> Client:
    return Client(gateway, gateway.token(ADMIN))


def lock_via_api(admin: Client, made: list[int], **body: Any) -> dict[str, Any]:
    response = admin.post("", body)
    assert response.status_code == 201, response.text
    lock = response.json()
    made.append(lock["id"])
    assert response.headers["Location"].endswith(f"{API}/{lock['id']}")
    return lock


def status_with(gateway: Gateway, token: str, path: str = RECORDS) -> requests.Response:
    return requests.get(
        gateway.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=15
    )


def wait_status(gateway: Gateway, token: str, status: int, since: float) -> float:
    """Seconds from `since` until `token` gets `status`; then, once BOUND has passed, every
    worker must answer it (ten requests in a row, spread over the workers)."""
    while True:
        response = status_with(gateway, token)
        if response.status_code == status:
            lag = time.monotonic() - since
            break
        assert time.monotonic() - since < BOUND + 2, (response.status_code, response.text)
        time.sleep(0.02)
    time.sleep(max(0.0, since + BOUND - time.monotonic()))
    seen = [status_with(gateway, token).status_code for _ in range(10)]
    assert seen == [status] * 10, seen
    return lag


def assert_json_error(response: requests.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json"), response.text
    body = response.json()
    assert body["error"] == error, body
    return body


def direct_exposure(gateway: Gateway, vendor: str) -> dict[str, tuple[int, int]]:
    """project → (distinct records, contractors) straight from access_log."""
    rows = gateway.db.rows(
        "SELECT project, COUNT(DISTINCT record_id), COUNT(DISTINCT subject) FROM access_log "
        "WHERE vendor = :vendor AND decision = 'allow' AND record_id IS NOT NULL "
        "GROUP BY project",
        vendor=vendor,
    )
    return {row[0]: (row[1], row[2]) for row in rows}


# --- the HTTP API ----------------------------------------------------------------------------


def test_api_round_trip_vendor_lock_exposure_audit_and_lift(
    gateway: Gateway, admin: Client, made: list[int]
) -> None:
    alice = gateway.token("alice")
    # What alice receives before the lock is what the exposure snapshot must show.
    for path in (
        "/api/projects/proj-1/tasks/task-1/records?limit=5",
        "/api/projects/proj-1/tasks/task-2/records?limit=3&offset=10",
        "/api/projects/proj-2/tasks/task-1/records?limit=2",
    ):
        assert status_with(gateway, alice, path).status_code == 200

    lock = lock_via_api(admin, made, kind="vendor", target="acme", reason="breach drill", ttl=None)
    committed = time.monotonic()
    assert (lock["kind"], lock["target"], lock["reason"]) == ("vendor", "acme", "breach drill")
    assert (lock["actor"], lock["state"], lock["active"]) == (ACTOR, "active", True)
    assert lock["expires_at"] is None and lock["lifted_at"] is None

    lag = wait_status(gateway, alice, 403, committed)
    assert lag <= BOUND, lag

    # The contractor learns only that access is suspended: no lock id, no reason.
    attempts = [status_with(gateway, alice) for _ in range(3)]
    for response in attempts:
        body = assert_json_error(response, 403, "locked")
        assert "breach drill" not in response.text
        assert str(lock["id"]) not in body["message"]
    # Every attempt is in the access log as a denial naming the lock.
    for response in attempts:
        rows = gateway.audit_rows(response.headers["X-Request-Id"])
        assert [(r.decision, r.reason, r.subject, r.vendor) for r in rows] == [
            ("deny", f"locked:{lock['id']}", "alice", "acme")
        ]
    denials = gateway.db.rows(
        "SELECT COUNT(*) FROM access_log WHERE reason = :reason AND subject = 'alice'",
        reason=f"locked:{lock['id']}",
    )[0][0]
    assert denials >= len(attempts) + 10

    # Exposure: the blast radius, equal to what access_log says acme's people received.
    exposure = lock["exposure"]
    assert exposure["window_days"] == 30
    by_project = {entry["project"]: entry for entry in exposure["projects"]}
    assert by_project["proj-1"]["distinct_records"] >= 8
    assert by_project["proj-2"]["distinct_records"] >= 2
    expected = direct_exposure(gateway, "acme")
    assert {
        project: (entry["distinct_records"], entry["contractors"])
        for project, entry in by_project.items()
    } == expected
    assert exposure["distinct_records"] == sum(count for count, _ in expected.values())
    assert exposure["contractors"] >= 1
    for entry in exposure["projects"]:
        assert entry["first_access"] <= entry["last_access"]

    # Admins see the lock, with its id, reason and exposure, in the list and on its own.
    listed = admin.get()
    assert listed.status_code == 200, listed.text
    mine = [item for item in listed.json()["locks"] if item["id"] == lock["id"]]
    assert len(mine) == 1
    assert mine[0]["reason"] == "breach drill" and mine[0]["exposure"] == exposure
    shown = admin.get(f"/{lock['id']}")
    assert shown.status_code == 200 and shown.json()["exposure"] == exposure

    lifted = admin.post(f"/{lock['id']}/lift", {"reason": "drill over"})
    committed = time.monotonic()
    assert lifted.status_code == 200, lifted.text
    body = lifted.json()
    assert (body["state"], body["active"], body["lifted_by"], body["lift_reason"]) == (
        "lifted",
        False,
        ACTOR,
        "drill over",
    )
    lag = wait_status(gateway, alice, 200, committed)
    assert lag <= BOUND, lag

    again = admin.post(f"/{lock['id']}/lift", {"reason": "twice"})
    assert_json_error(again, 409, "already_lifted")
    assert lock["id"] not in [item["id"] for item in admin.get().json()["locks"]]
    history = admin.get(all="true").json()["locks"]
    assert [item["state"] for item in history if item["id"] == lock["id"]] == ["lifted"]

    events = gateway.db.rows(
        "SELECT actor, action, target, reason FROM admin_events "
        "WHERE action IN ('lock.create', 'lock.lift') AND target = 'vendor:acme' "
        "ORDER BY id DESC LIMIT 2"
    )
    assert [tuple(row) for row in events] == [
        (ACTOR, "lock.lift", "vendor:acme", "drill over"),
        (ACTOR, "lock.create", "vendor:acme", "breach drill"),
    ]


def test_locked_contractor_is_refused_with_a_brand_new_token(
    gateway: Gateway, admin: Client, made: list[int]
) -> None:
    bob = gateway.token("bob")
    assert status_with(gateway, bob).status_code == 200  # cached validation of bob's token
    lock = lock_via_api(
        admin, made, kind="contractor", target="acme-idp:bob", reason="stolen laptop", ttl="2h"
    )
    committed = time.monotonic()
    assert lock["expires_at"] is not None
    wait_status(gateway, bob, 403, committed)
    # A new login at the same IdP gives a new token; it is refused all the same.
    fresh = obtain_tokens(gateway.idp.url, "bob")["access_token"]
    assert fresh != bob
    for _ in range(4):
        assert_json_error(status_with(gateway, fresh), 403, "locked")
    # The rest of the vendor is unaffected.
    assert status_with(gateway, gateway.token("alice")).status_code == 200
    assert admin.post(f"/{lock['id']}/lift", {"reason": "laptop found"}).status_code == 200
    wait_status(gateway, fresh, 200, time.monotonic())


def test_expired_and_lifted_locks_are_listed_only_with_all(
    gateway: Gateway, admin: Client, made: list[int]
) -> None:
    # A contractor nobody uses, so the short lock disturbs no other test.
    lock = lock_via_api(
        admin,
        made,
        kind="contractor",
        target="acme-idp:nobody",
        reason="ttl test",
        ttl="1s",
        force=True,
    )
    time.sleep(1.5)
    assert admin.get(f"/{lock['id']}").json()["state"] == "expired"
    assert lock["id"] not in [item["id"] for item in admin.get(all="false").json()["locks"]]
    states = {item["id"]: item["state"] for item in admin.get(all="true").json()["locks"]}
    assert states[lock["id"]] == "expired"


# Every operation of the locks API: (method, path under API, body).
OPERATIONS = [
    ("get", "", None),
    ("get", "?all=true", None),
    ("get", "/1", None),
    ("post", "", {"kind": "vendor", "target": "acme", "reason": "not an admin", "ttl": None}),
    ("post", "/1/lift", {"reason": "not an admin"}),
]


@pytest.mark.parametrize(("method", "path", "body"), OPERATIONS)
def test_only_admins_may_call(gateway: Gateway, db: Any, method: str, path: str, body: Any) -> None:
    before = list_locks(db, include_inactive=True)
    # A contractor of each vendor, an auditor, and an "admin" from an IdP not trusted for roles.
    for sub in ("alice", "carol", "audrey", "admin-ann"):
        response = getattr(Client(gateway, gateway.token(sub)), method)(path, **_body(body))
        assert_json_error(response, 403, "forbidden")
    for token in (None, "not-a-token", "a.b.c"):
        response = getattr(Client(gateway, token), method)(path, **_body(body))
        assert response.status_code == 401 and response.json()["error"], response.text
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    # A refused caller's large body is read and dropped: the connection stays usable.
    contractor = Client(gateway, gateway.token("alice"))
    for _ in range(3):
        response = contractor.post("", {"reason": "x" * 1_000_000})
        assert_json_error(response, 403, "forbidden")
        assert_json_error(contractor.get(), 403, "forbidden")
    assert list_locks(db, include_inactive=True) == before


def _body(body: Any) -> dict[str, Any]:
    return {} if body is None else {"body": body}


BAD_LOCKS = [
    ({}, {"kind", "target", "reason"}),
    ({"kind": "planet", "target": "acme", "reason": "x"}, {"kind"}),
    ({"kind": ["vendor"], "target": "acme", "reason": "x"}, {"kind"}),
    ({"kind": "vendor", "target": "", "reason": "x"}, {"target"}),
    ({"kind": "vendor", "target": 7, "reason": "x"}, {"target"}),
    ({"kind": "vendor", "target": "ac me", "reason": "x"}, {"target"}),
    ({"kind": "vendor", "target": "a" * 300, "reason": "x"}, {"target"}),
    ({"kind": "contractor", "target": "alice", "reason": "x"}, {"target"}),
    ({"kind": "contractor", "target": "nope-idp:alice", "reason": "x"}, {"target"}),
    ({"kind": "contractor", "target": "acme-idp:", "reason": "x"}, {"target"}),
    ({"kind": "issuer", "target": "acme", "reason": "x"}, {"target"}),
    ({"kind": "vendor", "target": "acmee", "reason": "x"}, {"target"}),
    ({"kind": "project", "target": "proj-99", "reason": "x"}, {"target"}),
    ({"kind": "vendor", "target": "acme", "reason": "x", "force": "yes"}, {"force"}),
    ({"kind": "vendor", "target": "acme"}, {"reason"}),
    ({"kind": "vendor", "target": "acme", "reason": "   "}, {"reason"}),
    ({"kind": "vendor", "target": "acme", "reason": ["x"]}, {"reason"}),
    ({"kind": "vendor", "target": "acme", "reason": "x" * 5000}, {"reason"}),
    ({"kind": "vendor", "target": "acme", "reason": "x", "ttl": "forever"}, {"ttl"}),
    ({"kind": "vendor", "target": "acme", "reason": "x", "ttl": "0h"}, {"ttl"}),
    ({"kind": "vendor", "target": "acme", "reason": "x", "ttl": "-5m"}, {"ttl"}),
    ({"kind": "vendor", "target": "acme", "reason": "x", "ttl": 3600}, {"ttl"}),
    ({"kind": "vendor", "target": "acme", "reason": "x", "ttl": "4000d"}, {"ttl"}),
    ({"kind": "vendor", "target": "acme", "reason": "x", "ttl": "9" * 30 + "d"}, {"ttl"}),
    ({"kind": "vendor", "target": "acme", "reason": "x", "extra": 1}, {"extra"}),
]


@pytest.mark.parametrize(("body", "fields"), BAD_LOCKS)
def test_bad_lock_requests_are_refused_field_by_field(
    gateway: Gateway, admin: Client, db: Any, body: dict[str, Any], fields: set[str]
) -> None:
    before = list_locks(db, include_inactive=True)
    response = admin.post("", body)
    refused = assert_json_error(response, 400, "invalid_request")
    assert set(refused["fields"]) == fields, refused
    assert list_locks(db, include_inactive=True) == before


def test_malformed_requests_get_json_errors(gateway: Gateway, admin: Client, db: Any) -> None:
    before = list_locks(db, include_inactive=True)
    for kwargs in (
        {"data": "kind=vendor&target=acme&reason=x"},
        {"data": "{not json", "headers": {"Content-Type": "application/json"}},
        {"data": b"\xff\xfe", "headers": {"Content-Type": "application/json"}},
        {"data": "[1, 2]", "headers": {"Content-Type": "application/json"}},
        {"data": "null", "headers": {"Content-Type": "application/json"}},
        {"data": "[" * 60_000, "headers": {"Content-Type": "application/json"}},
    ):
        body = assert_json_error(admin.post("", **kwargs), 400, "invalid_request")
        assert set(body["fields"]) == {"body"}, body
    # Too large, with a length or chunked; the kept-alive connection stays usable after.
    oversized = {"kind": "vendor", "target": "acme", "reason": "x" * 2_000_000}
    for _ in range(3):
        assert_json_error(admin.post("", oversized), 413, "request_entity_too_large")
        assert_json_error(admin.get("/999999"), 404, "not_found")
    chunks = iter([b'{"kind": "vendor", "reason": "', b"x" * 100_000, b'"}'])
    chunked = admin.post("", data=chunks, headers={"Content-Type": "application/json"})
    assert_json_error(chunked, 413, "request_entity_too_large")
    assert_json_error(admin.get("/999999"), 404, "not_found")

    for params in ({"all": "maybe"}, {"all": ["true", "false"]}, {"bogus": "1"}):
        assert_json_error(admin.get(**params), 400, "invalid_request")
    for path in ("/999999", "/99999999999999999999999", "/abc", "/-1"):
        assert_json_error(admin.get(path), 404, "not_found")
        assert_json_error(admin.post(path + "/lift", {"reason": "x"}), 404, "not_found")
    assert_json_error(admin.post("/1/lift", {}), 400, "invalid_request")
    assert_json_error(admin.post("/1/lift", {"reason": ""}), 400, "invalid_request")
    assert_json_error(admin.post("/1/lift", {"reason": "x", "why": "y"}), 400, "invalid_request")
    assert_json_error(admin.post("/1/lift", data="x"), 400, "invalid_request")
    assert list_locks(db, include_inactive=True) == before


# --- the CLI ---------------------------------------------------------------------------------


def cli(gateway: Gateway, *args: str, **env: str) -> Any:
    """`gateway ARGS` in this process (click's CliRunner) against the test database."""
    runner = CliRunner()
    return runner.invoke(
        gateway_main,
        list(args),
        env={
            "GATEWAY_CONFIG": str(gateway.config_path),
            "UPSTREAM_TOKEN": UPSTREAM_TOKEN,
            "USER": "responder",
            **env,
        },
        catch_exceptions=False,
    )


def test_cli_round_trip(gateway: Gateway, db: Any, made: list[int]) -> None:
    alice = gateway.token("alice")
    assert status_with(gateway, alice).status_code == 200  # alice has received proj-1 records

    # The real `gateway` command, as a responder would run it.
    result = gateway.cli("lock", "vendor", "acme", "--reason", "cli drill", "--ttl", "1h")
    committed = time.monotonic()
    found = re.search(r"^lock (\d+): vendor acme locked", result.stdout, re.MULTILINE)
    assert found, result.stdout
    lock_id = int(found.group(1))
    made.append(lock_id)
    assert "distinct records" in result.stdout and "proj-1" in result.stdout, result.stdout
    lag = wait_status(gateway, alice, 403, committed)
    assert lag <= BOUND, lag

    table = cli(gateway, "locks")
    assert table.exit_code == 0, table.output
    header, *rows = table.stdout.splitlines()
    assert header.split() == [
        "ID",
        "KIND",
        "TARGET",
        "REASON",
        "ACTOR",
        "CREATED",
        "EXPIRES",
        "STATE",
    ]
    row = next(line for line in rows if line.split()[0] == str(lock_id))
    assert row.split()[1:4] == ["vendor", "acme", "cli"] and row.split()[-1] == "active", row
    listed = json.loads(cli(gateway, "locks", "--json").stdout)["locks"]
    mine = next(item for item in listed if item["id"] == lock_id)
    assert mine["reason"] == "cli drill" and mine["state"] == "active"
    assert mine["exposure"]["projects"], mine
    assert mine["expires_at"] is not None

    lifted = cli(gateway, "unlock", str(lock_id), "--reason", "drill over", "--actor", "ops-2")
    committed = time.monotonic()
    assert lifted.exit_code == 0, lifted.output
    assert f"lock {lock_id} lifted: vendor acme" in lifted.stdout
    lag = wait_status(gateway, alice, 200, committed)
    assert lag <= BOUND, lag
    history = json.loads(cli(gateway, "locks", "--all", "--json").stdout)["locks"]
    mine = next(item for item in history if item["id"] == lock_id)
    assert (mine["state"], mine["lifted_by"], mine["lift_reason"]) == (
        "lifted",
        "ops-2",
        "drill over",
    )
    assert str(lock_id) not in cli(gateway, "locks").stdout.split()
    assert cli(gateway, "locks", "--all").stdout.count("lifted") >= 1


def test_misspelled_target_names_the_near_match_and_force_records_it(
    gateway: Gateway, admin: Client, made: list[int]
) -> None:
    refused = admin.post("", {"kind": "vendor", "target": "acmee", "reason": "breach"})
    assert refused.status_code == 400
    assert "did you mean 'acme'" in refused.json()["fields"]["target"]
    # A vendor whose people have not arrived yet can still be locked, deliberately.
    lock = lock_via_api(
        admin, made, kind="vendor", target="initech", reason="pre-emptive", force=True
    )
    events = gateway.db.rows(
        "SELECT after FROM admin_events WHERE action = 'lock.create' AND target = :t",
        t="vendor:initech",
    )
    assert [json.loads(row.after).get("forced_unknown_target") for row in events] == [True]
    assert admin.post(f"/{lock['id']}/lift", {"reason": "drill"}).status_code == 200


def test_cli_lock_json_and_default_actor(gateway: Gateway, db: Any, made: list[int]) -> None:
    result = cli(
        gateway, "lock", "contractor", "acme-idp:nobody", "--reason", "json", "--json", "--force"
    )
    assert result.exit_code == 0, result.output
    lock = json.loads(result.stdout)
    made.append(lock["id"])
    assert (lock["kind"], lock["target"], lock["actor"], lock["state"]) == (
        "contractor",
        "acme-idp:nobody",
        "responder",
        "active",
    )
    assert lock["exposure"]["distinct_records"] == 0


def _error_line(result: Any) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


CLI_MISTAKES = [
    (("lock", "planet", "acme", "--reason", "x"), "unknown lock kind"),
    (("lock",), "KIND is required"),
    (("lock", "vendor"), "TARGET is required"),
    (("lock", "vendor", "acme"), "--reason is required"),
    (("lock", "vendor", "acme", "--reason", "  "), "--reason is required"),
    (("lock", "vendor", "acme", "--reason", "x", "--ttl", "soon"), "--ttl"),
    (("lock", "vendor", "acme", "--reason", "x", "--ttl", "0m"), "--ttl"),
    (("lock", "vendor", "acme", "--reason", "x", "--ttl", "99999999999999999999d"), "--ttl"),
    (("lock", "vendor", "ac me", "--reason", "x"), "TARGET"),
    (("lock", "contractor", "alice", "--reason", "x"), "<issuer name>:<sub>"),
    (("lock", "issuer", "acme", "--reason", "x"), "not a configured issuer"),
    # Misspelled during an incident: refused, with the names that do exist.
    (("lock", "vendor", "acmee", "--reason", "x"), "did you mean 'acme'"),
    (("lock", "contractor", "acme-idp:alicee", "--reason", "x"), "'acme-idp:alice'"),
    (("lock", "project", "proj-99", "--reason", "x"), "did you mean"),
    (("unlock", "--reason", "x"), "LOCK_ID is required"),
    (("unlock", "abc", "--reason", "x"), "is not a lock id"),
    (("unlock", "999999", "--reason", "x"), "no lock 999999"),
    (("unlock", "99999999999999999999", "--reason", "x"), "no lock"),
    (("unlock", "1"), "--reason is required"),
]


@pytest.mark.parametrize(("args", "message"), CLI_MISTAKES)
def test_cli_bad_input_is_one_error_line(
    gateway: Gateway, db: Any, args: tuple[str, ...], message: str
) -> None:
    before = list_locks(db, include_inactive=True)
    assert message in _error_line(cli(gateway, *args))
    assert list_locks(db, include_inactive=True) == before


def test_cli_unlock_twice_and_unreachable_database(
    gateway: Gateway, db: Any, made: list[int]
) -> None:
    lock = json.loads(
        cli(
            gateway, "lock", "contractor", "acme-idp:nobody", "--reason", "x", "--json", "--force"
        ).stdout
    )
    made.append(lock["id"])
    assert cli(gateway, "unlock", str(lock["id"]), "--reason", "done").exit_code == 0
    again = _error_line(cli(gateway, "unlock", str(lock["id"]), "--reason", "again"))
    assert "already lifted" in again

    unreachable = {"GATEWAY_DATABASE__URL": "postgresql+psycopg://postgres@127.0.0.1:1/none"}
    for args in (
        ("lock", "vendor", "acme", "--reason", "x"),
        ("unlock", "1", "--reason", "x"),
        ("locks", "--all"),
    ):
        assert "database unreachable" in _error_line(cli(gateway, *args, **unreachable))
    # And the real command: no traceback on a terminal either.
    real = gateway.cli("locks", check=False)
    assert real.returncode == 0, real.stderr
    broken = gateway.cli("lock", "vendor", "acme", check=False)
    assert broken.returncode != 0 and "Traceback" not in broken.stderr
    assert broken.stderr.strip().splitlines() == [
        'Error: --reason is required: say why, e.g. --reason "vendor breach, ticket 4711"'
    ]
