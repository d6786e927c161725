"""Auditor reads over real traffic: query, record provenance, exposure report, signed
manifests, the auditor role, and the log of auditor reads.

Everything runs against the real gateway processes (`gateway` fixture, SQLite and
PostgreSQL). The database is shared with the other test modules, so every assertion is
scoped to a time window that starts with this module's traffic, or to its request ids.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from tests.conftest import Gateway

AUDITOR = "audrey"


def canonical_sha256(record: dict) -> str:
    return hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).hexdigest()


def iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def db_time(gateway: Gateway, value: datetime) -> Any:
    """A time to bind in raw SQL against access_log.time on this backend (SQLite keeps
    the text `datetime.isoformat(" ")` of an aware UTC time)."""
    value = value.astimezone(UTC)
    return value.isoformat(" ") if gateway.db.kind == "sqlite" else value


def as_utc(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def auditor_get(gateway: Gateway, path: str, **params: Any) -> requests.Response:
    return gateway.get(path, AUDITOR, params=params)


# --- the traffic every test here reads ---------------------------------------------------

# (contractor, path, expected status); records are released, denied (403 'deny') or
# withheld record by record (403 or 200 with 'filtered' rows).
TRAFFIC = [
    ("alice", "/api/projects/proj-1/tasks/task-1/records?offset=0&limit=20", 200),
    ("alice", "/api/projects/proj-1/tasks/task-1/records?offset=10&limit=20", 200),
    ("bob", "/api/projects/proj-1/tasks/task-1/records?offset=25&limit=10", 200),
    ("bob", "/api/projects/proj-1/tasks/task-2/records?limit=5", 403),
    ("alice", "/api/projects/proj-2/records?offset=295&limit=10", 200),
    ("alice", "/api/records/rec-2-1-0042", 200),
    ("alice", "/api/records/rec-2-1-0042", 200),
    ("bob", "/api/records/rec-2-1-0042", 403),
    ("carol", "/api/records/rec-2-1-0042", 403),
    ("alice", "/api/projects/proj-3/tasks/task-1/records", 403),
    ("carol", "/api/projects/proj-3/tasks/task-1/records?limit=5", 200),
    ("carol", "/api/projects/proj-1/tasks/task-1/records", 403),
]
VENDOR_OF = {"alice": "acme", "bob": "acme", "carol": "globex"}


@dataclass
class Traffic:
    since: datetime
    until: datetime
    request_ids: list[str] = field(default_factory=list)
    # vendor → record id → (project, task) of every record the client received
    received: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)
    records: dict[str, dict] = field(default_factory=dict)

    def window(self) -> dict[str, str]:
        return {"since": iso(self.since), "until": iso(self.until)}


def run_traffic(gateway: Gateway) -> Traffic:
    for sub in VENDOR_OF:  # tokens first: the window holds only gateway traffic
        gateway.token(sub)
    traffic = Traffic(since=datetime.now(UTC), until=datetime.now(UTC))
    for sub, path, status in TRAFFIC:
        response = gateway.get(path, sub)
        assert response.status_code == status, (sub, path, response.text)
        traffic.request_ids.append(response.headers["X-Request-Id"])
        if status != 200:
            continue
        body = response.json()
        for record in body.get("records", [body]):
            received = traffic.received.setdefault(VENDOR_OF[sub], {})
            received[record["id"]] = (record["project"], record["task"])
            traffic.records[record["id"]] = record
    time.sleep(0.01)
    traffic.until = datetime.now(UTC)
    return traffic


@pytest.fixture(scope="module")
def traffic(gateway: Gateway) -> Traffic:
    return run_traffic(gateway)


def window_rows(gateway: Gateway, traffic: Traffic, where: str = "", **params: Any) -> list:
    return gateway.db.rows(
        "SELECT id, time, issuer, subject, vendor, project, task, record_id, record_sha256, "  # noqa: S608
        "decision FROM access_log WHERE time >= :since AND time < :until "
        f"{('AND ' + where) if where else ''} ORDER BY time, id",
        since=db_time(gateway, traffic.since),
        until=db_time(gateway, traffic.until),
        **params,
    )


# --- exposure report -------------------------------------------------------------------


def expected_exposure(rows: list) -> tuple[dict, dict, dict]:
    """The report's figures recomputed in Python from raw access rows."""
    groups: dict[tuple, dict] = defaultdict(
        lambda: {"records": set(), "times": 0, "who": set(), "times_seen": [], "deny": 0, "filt": 0}
    )
    people: dict[str, dict] = defaultdict(
        lambda: {"tasks": set(), "times": 0, "deny": 0, "filt": 0}
    )
    for row in rows:
        group = groups[(row.project, row.task)]
        person = people[f"{row.issuer}:{row.subject}"]
        if row.decision == "allow" and row.record_id is not None:
            group["records"].add(row.record_id)
            group["times"] += 1
            person["tasks"].add((row.project, row.task))
            person["times"] += 1
            group["who"].add(f"{row.issuer}:{row.subject}")
            group["times_seen"].append(as_utc(row.time))
        elif row.decision == "deny":
            group["deny"] += 1
            person["deny"] += 1
        elif row.decision == "filtered":
            group["filt"] += 1
            person["filt"] += 1
    by_group = {
        key: {
            "distinct_records": len(g["records"]),
            "times_received": g["times"],
            "contractors": len(g["who"]),
            "first_access": min(g["times_seen"]) if g["times_seen"] else None,
            "last_access": max(g["times_seen"]) if g["times_seen"] else None,
            "denied": g["deny"],
            "filtered": g["filt"],
        }
        for key, g in groups.items()
        if g["times"] or g["deny"] or g["filt"]
    }
    by_person = {
        name: {
            "tasks": len(p["tasks"]),
            "times_received": p["times"],
            "denied": p["deny"],
            "filtered": p["filt"],
        }
        for name, p in people.items()
        if p["times"] or p["deny"] or p["filt"]
    }
    totals = {
        "distinct_records": len({r.record_id for r in rows if _received(r)}),
        "times_received": sum(1 for r in rows if _received(r)),
        "contractors": len({(r.issuer, r.subject) for r in rows if _received(r)}),
        "contractors_attempting": len(
            {
                (r.issuer, r.subject)
                for r in rows
                if _received(r) or r.decision in ("deny", "filtered")
            }
        ),
        "denied": sum(1 for r in rows if r.decision == "deny"),
        "filtered": sum(1 for r in rows if r.decision == "filtered"),
    }
    return by_group, by_person, totals


def _received(row: Any) -> bool:
    return row.decision == "allow" and row.record_id is not None


SCOPES = [
    ({"vendor": "acme"}, "vendor = :v", {"v": "acme"}),
    ({"vendor": "globex"}, "vendor = :v", {"v": "globex"}),
    (
        {"contractor": "acme-idp:alice"},
        "issuer = :i AND subject = :s",
        {"i": "acme-idp", "s": "alice"},
    ),
    ({"project": "proj-1"}, "project = :p", {"p": "proj-1"}),
    (
        {"vendor": "acme", "project": "proj-2"},
        "vendor = :v AND project = :p",
        {"v": "acme", "p": "proj-2"},
    ),
]


@pytest.mark.parametrize(("scope", "where", "params"), SCOPES, ids=lambda v: str(v))
def test_exposure_report_equals_direct_count_over_access_rows(
    gateway: Gateway, traffic: Traffic, scope: dict, where: str, params: dict
) -> None:
    response = auditor_get(gateway, "/_gateway/audit/exposure", **scope, **traffic.window())
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["query"] == {**scope, **traffic.window()}

    # Totals against a plain SQL count.
    sql = (
        "SELECT count(DISTINCT CASE WHEN decision = 'allow' THEN record_id END), "  # noqa: S608
        "sum(CASE WHEN decision = 'allow' AND record_id IS NOT NULL THEN 1 ELSE 0 END), "
        "sum(CASE WHEN decision = 'deny' THEN 1 ELSE 0 END), "
        "sum(CASE WHEN decision = 'filtered' THEN 1 ELSE 0 END) "
        f"FROM access_log WHERE time >= :since AND time < :until AND {where}"
    )
    [(distinct, times, denied, filtered)] = gateway.db.rows(
        sql,
        since=db_time(gateway, traffic.since),
        until=db_time(gateway, traffic.until),
        **params,
    )
    totals = report["totals"]
    assert (totals["distinct_records"], totals["times_received"]) == (distinct, times)
    assert (totals["denied"], totals["filtered"]) == (denied, filtered)

    # Per project/task and per contractor against the raw rows.
    rows = window_rows(gateway, traffic, where, **params)
    by_group, by_person, expected_totals = expected_exposure(rows)
    assert {k: v for k, v in totals.items() if k in expected_totals} == expected_totals
    got_groups = {
        (item["project"], item["task"]): {
            **{k: item[k] for k in ("distinct_records", "times_received", "contractors")},
            "first_access": parse(item["first_access"]) if item["first_access"] else None,
            "last_access": parse(item["last_access"]) if item["last_access"] else None,
            "denied": item["denied"],
            "filtered": item["filtered"],
        }
        for item in report["projects"]
    }
    assert got_groups == by_group
    got_people = {
        item["contractor"]: {k: item[k] for k in ("tasks", "times_received", "denied", "filtered")}
        for item in report["contractors"]
    }
    assert got_people == by_person


def test_exposure_report_matches_what_the_clients_received(
    gateway: Gateway, traffic: Traffic
) -> None:
    report = auditor_get(
        gateway, "/_gateway/audit/exposure", vendor="acme", **traffic.window()
    ).json()
    groups = {(g["project"], g["task"]): g for g in report["projects"]}
    # alice read offsets 0-19 and 10-29 of proj-1/task-1, bob 25-34: 35 records, 50 times.
    assert groups[("proj-1", "task-1")]["distinct_records"] == 35
    assert groups[("proj-1", "task-1")]["times_received"] == 50
    assert groups[("proj-1", "task-1")]["contractors"] == 2
    assert groups[("proj-1", "task-2")]["denied"] == 1
    assert groups[("proj-2", "task-2")]["filtered"] == 5
    assert groups[("proj-2", "task-1")]["filtered"] == 1  # bob's try at rec-2-1-0042
    assert report["totals"]["distinct_records"] == len(traffic.received["acme"])
    assert {c["contractor"] for c in report["contractors"]} == {"acme-idp:alice", "acme-idp:bob"}


# --- signed manifests ------------------------------------------------------------------


def manifest_from_rows(rows: list) -> dict[tuple, tuple]:
    """(record, project, task) → (first, last, times, last sha256), from raw rows in
    (time, id) order."""
    out: dict[tuple, list] = {}
    for row in rows:
        if not _received(row):
            continue
        key = (row.record_id, row.project, row.task)
        stamp = as_utc(row.time)
        if key not in out:
            out[key] = [stamp, stamp, 0, None]
        entry = out[key]
        entry[1] = stamp
        entry[2] += 1
        entry[3] = row.record_sha256
    return {key: tuple(value) for key, value in out.items()}


def read_csv_manifest(data: bytes) -> dict[tuple, tuple]:
    reader = csv.DictReader(io.StringIO(data.decode()))
    assert reader.fieldnames == [
        "record_id",
        "project",
        "task",
        "first_access",
        "last_access",
        "times_received",
        "last_sha256",
    ]
    return {
        (r["record_id"], r["project"], r["task"]): (
            parse(r["first_access"]),
            parse(r["last_access"]),
            int(r["times_received"]),
            r["last_sha256"],
        )
        for r in reader
    }


def test_manifest_is_complete_signed_and_fails_after_a_one_byte_change(
    gateway: Gateway, traffic: Traffic, tmp_path: Path
) -> None:
    response = auditor_get(
        gateway, "/_gateway/audit/exposure/manifest", vendor="acme", **traffic.window()
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment" in response.headers["Content-Disposition"]
    data = response.content
    document = json.loads(response.headers["X-Manifest-Signature"])
    assert document["alg"] == "Ed25519"
    assert document["sha256"] == hashlib.sha256(data).hexdigest()
    assert response.headers["X-Manifest-SHA256"] == document["sha256"]
    assert document["query"] == {"vendor": "acme", **traffic.window(), "format": "csv"}
    assert document["bytes"] == len(data)

    # Content: one line per record received, equal to the raw rows and to the client's view.
    manifest = read_csv_manifest(data)
    assert document["records"] == len(manifest)
    rows = window_rows(gateway, traffic, "vendor = :v", v="acme")
    assert manifest == manifest_from_rows(rows)
    assert {key[0]: key[1:] for key in manifest} == traffic.received["acme"]
    for (record_id, *_), (*_, sha) in manifest.items():
        assert sha == canonical_sha256(traffic.records[record_id])
    assert [key[0] for key in manifest] == sorted(key[0] for key in manifest)

    # The signature verifies against the gateway's keys in the database...
    path = tmp_path / "acme.csv"
    path.write_bytes(data)
    (tmp_path / "acme.csv.sig").write_text(response.headers["X-Manifest-Signature"])
    ok = gateway.cli("audit", "verify-manifest", str(path))
    assert ok.stdout.startswith("valid:"), ok.stdout
    # ... and with the published JWKS, over the ASCII hex digest.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    jwk = next(
        k for k in gateway.get("/_gateway/jwks.json").json()["keys"] if k["kid"] == document["kid"]
    )
    public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(jwk["x"] + "=="))
    signature = base64.urlsafe_b64decode(document["signature"] + "==")
    public.verify(signature, document["sha256"].encode("ascii"))

    # One byte changed: refused, exit non-zero, one clear line.
    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 0x01
    path.write_bytes(bytes(tampered))
    bad = gateway.cli("audit", "verify-manifest", str(path), check=False)
    assert bad.returncode != 0
    assert "changed" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr

    # Changed file with a signature document edited to its new digest: the signature fails.
    forged = dict(document, sha256=hashlib.sha256(bytes(tampered)).hexdigest())
    forged_sig = tmp_path / "forged.sig"
    forged_sig.write_text(json.dumps(forged))
    bad = gateway.cli(
        "audit", "verify-manifest", str(path), "--signature", str(forged_sig), check=False
    )
    assert bad.returncode != 0 and "does not verify" in bad.stderr, bad.stderr


def test_cli_exposure_writes_the_same_manifest_and_its_signature(
    gateway: Gateway, traffic: Traffic, tmp_path: Path
) -> None:
    api = auditor_get(
        gateway, "/_gateway/audit/exposure/manifest", vendor="acme", **traffic.window()
    )
    window = traffic.window()
    path = tmp_path / "acme.csv"
    result = gateway.cli(
        "audit", "exposure", "--vendor", "acme", "--since", window["since"],
        "--until", window["until"], "--manifest", str(path), "--json",
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert report["totals"]["distinct_records"] == len(traffic.received["acme"])
    # The same window gives the same bytes, whoever produced them.
    assert path.read_bytes() == api.content
    document = json.loads((tmp_path / "acme.csv.sig").read_text())
    assert document["sha256"] == api.headers["X-Manifest-SHA256"]
    gateway.cli("audit", "verify-manifest", str(path))

    jsonl = tmp_path / "acme.jsonl"
    gateway.cli(
        "audit", "exposure", "--vendor", "acme", "--since", window["since"],
        "--until", window["until"], "--manifest", str(jsonl),
    )  # fmt: skip
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert {line["record_id"] for line in lines} == set(traffic.received["acme"])
    assert json.loads((tmp_path / "acme.jsonl.sig").read_text())["format"] == "jsonl"
    gateway.cli("audit", "verify-manifest", str(jsonl))
    jsonl.write_text(jsonl.read_text().replace('"times_received":1', '"times_received":0', 1))
    assert gateway.cli("audit", "verify-manifest", str(jsonl), check=False).returncode != 0

    api_jsonl = auditor_get(
        gateway,
        "/_gateway/audit/exposure/manifest",
        vendor="acme",
        format="jsonl",
        **traffic.window(),
    )
    assert api_jsonl.headers["Content-Type"].startswith("application/jsonl")
    assert [json.loads(x) for x in api_jsonl.text.splitlines()] == lines


# --- query and pagination --------------------------------------------------------------


def test_query_filters_match_the_rows(gateway: Gateway, traffic: Traffic) -> None:
    cases = [
        ({"vendor": "acme"}, "vendor = :x", "acme"),
        ({"contractor": "lab-idp:carol"}, "subject = :x", "carol"),
        ({"issuer": "lab-idp"}, "issuer = :x", "lab-idp"),
        ({"project": "proj-2"}, "project = :x", "proj-2"),
        ({"task": "task-2"}, "task = :x", "task-2"),
        ({"record": "rec-2-1-0042"}, "record_id = :x", "rec-2-1-0042"),
        ({"decision": "deny"}, "decision = :x", "deny"),
        ({"decision": "filtered"}, "decision = :x", "filtered"),
        ({"client_ip": "127.0.0.1"}, "client_ip = :x", "127.0.0.1"),
        ({"request_id": traffic.request_ids[0]}, "request_id = :x", traffic.request_ids[0]),
    ]
    for params, where, value in cases:
        response = auditor_get(
            gateway, "/_gateway/audit/events", limit="1000", **params, **traffic.window()
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["next_cursor"] is None
        expected = [row.id for row in window_rows(gateway, traffic, where, x=value)]
        assert expected, params
        assert [event["id"] for event in body["events"]] == expected, params
    event = auditor_get(
        gateway, "/_gateway/audit/events", request_id=traffic.request_ids[0]
    ).json()["events"][0]
    assert event["contractor"] == "acme-idp:alice" and event["vendor"] == "acme"
    assert event["decision"] == "allow" and event["record_sha256"]
    assert event["time"].endswith("Z") and event["policy_version"] >= 1
    # An offset other than Z names the same instant.
    shifted = traffic.since.astimezone(timezone(timedelta(hours=2)))
    same = auditor_get(
        gateway,
        "/_gateway/audit/events",
        since=shifted.isoformat(),
        until=iso(traffic.until),
        limit="1000",
    ).json()
    assert [e["id"] for e in same["events"]] == [row.id for row in window_rows(gateway, traffic)]


def walk(gateway: Gateway, params: dict, limit: int, between_pages: Any = None) -> list[dict]:
    seen: list[dict] = []
    cursor = None
    while True:
        query = {**params, "limit": str(limit)}
        if cursor:
            query["cursor"] = cursor
        response = auditor_get(gateway, "/_gateway/audit/events", **query)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["events"]) <= limit
        seen += page["events"]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen
        assert len(page["events"]) == limit
        if between_pages is not None:
            between_pages()


def test_pagination_sees_every_row_once_in_order_while_rows_arrive(
    gateway: Gateway, traffic: Traffic
) -> None:
    before = {row.id for row in window_rows(gateway, traffic)}
    since = iso(traffic.since)
    during: list[str] = []

    def insert_between_pages() -> None:
        response = gateway.get("/api/projects/proj-1/tasks/task-1/records?limit=3", "bob")
        during.append(response.headers["X-Request-Id"])

    # Meanwhile another client keeps inserting rows at its own pace.
    stop = threading.Event()
    background: list[str] = []

    def keep_inserting() -> None:
        while not stop.is_set() and len(background) < 200:
            response = gateway.get("/api/projects/proj-3/tasks/task-1/records?limit=2", "carol")
            background.append(response.headers["X-Request-Id"])
            time.sleep(0.01)

    thread = threading.Thread(target=keep_inserting)
    thread.start()
    try:
        seen = walk(gateway, {"since": since}, limit=9, between_pages=insert_between_pages)
    finally:
        stop.set()
        thread.join()

    ids = [event["id"] for event in seen]
    assert len(ids) == len(set(ids)), "an event appeared twice"
    keys = [(parse(event["time"]), event["id"]) for event in seen]
    assert keys == sorted(keys) and len(during) >= 3
    assert before <= set(ids), "a row committed before the walk was skipped"
    # Rows inserted between pages start after everything already read: all are seen.
    inserted = {
        row.id
        for rid in during
        for row in gateway.db.rows("SELECT id FROM access_log WHERE request_id = :r", r=rid)
    }
    assert inserted <= set(ids)


def test_cli_query_walks_all_pages_as_json_lines_and_table(
    gateway: Gateway, traffic: Traffic
) -> None:
    window = traffic.window()
    expected = [row.id for row in window_rows(gateway, traffic)]
    result = gateway.cli(
        "audit", "query", "--since", window["since"], "--until", window["until"],
        "--limit", "7", "--all", "--jsonl",
    )  # fmt: skip
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == expected
    one_page = gateway.cli(
        "audit", "query", "--since", window["since"], "--until", window["until"],
        "--limit", "7", "--json",
    )  # fmt: skip
    page = json.loads(one_page.stdout)
    assert [e["id"] for e in page["events"]] == expected[:7] and page["next_cursor"]
    rest = gateway.cli(
        "audit", "query", "--since", window["since"], "--until", window["until"],
        "--limit", "1000", "--cursor", page["next_cursor"], "--jsonl",
    )  # fmt: skip
    assert [json.loads(line)["id"] for line in rest.stdout.splitlines()] == expected[7:]
    table = gateway.cli("audit", "query", "--request-id", traffic.request_ids[3])
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["time", "contractor", "vendor", "decision"]
    assert "acme-idp:bob" in lines[1] and "deny" in lines[1]


# --- record provenance -----------------------------------------------------------------


def test_record_provenance_lists_every_access(gateway: Gateway, traffic: Traffic) -> None:
    record_id = "rec-2-1-0042"
    response = auditor_get(gateway, f"/_gateway/audit/records/{record_id}")
    assert response.status_code == 200, response.text
    body = response.json()
    rows = gateway.db.rows(
        "SELECT id, request_id, issuer, subject, vendor, decision, policy_version, "
        "record_sha256 FROM access_log WHERE record_id = :r ORDER BY time, id",
        r=record_id,
    )
    assert [
        (
            a["id"],
            a["request_id"],
            a["issuer"],
            a["subject"],
            a["vendor"],
            a["decision"],
            a["policy_version"],
            a["record_sha256"],
        )
        for a in body["accesses"]
    ] == [tuple(row) for row in rows]
    assert body["summary"]["accesses"] == len(rows) and body["next_cursor"] is None
    mine = {a["request_id"]: a for a in body["accesses"] if a["request_id"] in traffic.request_ids}
    assert sorted((a["contractor"], a["decision"]) for a in mine.values()) == [
        ("acme-idp:alice", "allow"),
        ("acme-idp:alice", "allow"),
        ("acme-idp:bob", "filtered"),
        ("lab-idp:carol", "filtered"),
    ]
    sha = canonical_sha256(traffic.records[record_id])
    assert {a["record_sha256"] for a in mine.values() if a["decision"] == "allow"} == {sha}
    assert all(a["time"] and a["policy_version"] >= 1 for a in mine.values())

    # Small pages walk the same list; the CLI prints it as JSON lines.
    paged: list[dict] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = auditor_get(gateway, f"/_gateway/audit/records/{record_id}", **params).json()
        paged += page["accesses"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert paged == body["accesses"]
    cli = gateway.cli("audit", "record", record_id, "--jsonl")
    assert [json.loads(line) for line in cli.stdout.splitlines()] == body["accesses"]
    unknown = auditor_get(gateway, "/_gateway/audit/records/no-such-record").json()
    assert unknown["accesses"] == [] and unknown["summary"]["accesses"] == 0


# --- bad input -------------------------------------------------------------------------

BAD_EVENT_QUERIES = [
    ({"decision": "maybe"}, "decision"),
    ({"since": "yesterday"}, "since"),
    ({"since": "2026-01-01T00:00:00"}, "since"),  # no offset
    ({"until": "2026-13-01T00:00:00Z"}, "until"),
    ({"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"cursor": base64.urlsafe_b64encode(b'["x", 1]').decode()}, "cursor"),
    ({"limit": "0"}, "limit"),
    ({"limit": "1001"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"limit": "-5"}, "limit"),
    ({"contractor": "alice"}, "contractor"),
    ({"vendor": ""}, "vendor"),
    ({"project": "x" * 300}, "project"),
    ({"colour": "red"}, "colour"),
    ({"vendor": ["acme", "globex"]}, "vendor"),
]


@pytest.mark.parametrize(("params", "name"), BAD_EVENT_QUERIES, ids=lambda v: str(v)[:40])
def test_bad_event_filter_is_400_naming_the_parameter(
    gateway: Gateway, params: dict, name: str
) -> None:
    response = auditor_get(gateway, "/_gateway/audit/events", **params)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_request"
    assert list(body["fields"]) == [name]
    assert body["message"].startswith(f"{name}: ")


@pytest.mark.parametrize(
    ("path", "params", "name"),
    [
        ("/_gateway/audit/exposure", {"since": "2026-01-01T00:00:00Z"}, "vendor"),
        ("/_gateway/audit/exposure", {"vendor": "acme", "limit": "3"}, "limit"),
        ("/_gateway/audit/exposure", {"vendor": "acme", "until": "soon"}, "until"),
        ("/_gateway/audit/exposure/manifest", {"vendor": "acme", "format": "xml"}, "format"),
        ("/_gateway/audit/exposure/manifest", {"contractor": "x:"}, "contractor"),
        ("/_gateway/audit/records/rec-1-1-0001", {"decision": "allow"}, "decision"),
        ("/_gateway/audit/records/rec-1-1-0001", {"limit": "5000"}, "limit"),
    ],
)
def test_bad_report_parameters_are_400_naming_the_parameter(
    gateway: Gateway, path: str, params: dict, name: str
) -> None:
    response = auditor_get(gateway, path, **params)
    assert response.status_code == 400, response.text
    assert list(response.json()["fields"]) == [name]


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["query", "--decision", "maybe"], "decision"),
        (["query", "--since", "2026-01-01"], "since"),
        (["query", "--limit", "0"], "limit"),
        (["query", "--cursor", "zzz"], "cursor"),
        (["query", "--format", "xml"], "format"),
        (["query", "--json", "--jsonl"], "--jsonl"),
        (["exposure", "--since", "2026-01-01T00:00:00Z"], "vendor"),
        (["exposure", "--vendor", "acme", "--manifest", "/tmp/x.csv", "--format", "xls"], "format"),
    ],
)
def test_cli_bad_input_is_one_error_line(gateway: Gateway, args: list, name: str) -> None:
    result = gateway.cli("audit", *args, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"Error: {name}: "), result.stderr


def test_verify_manifest_refuses_missing_and_garbage_signatures(
    gateway: Gateway, tmp_path: Path
) -> None:
    path = tmp_path / "m.csv"
    path.write_text("record_id\n")
    missing = gateway.cli("audit", "verify-manifest", str(path), check=False)
    assert missing.returncode == 1 and "m.csv.sig" in missing.stderr
    (tmp_path / "m.csv.sig").write_text("not json")
    garbage = gateway.cli("audit", "verify-manifest", str(path), check=False)
    assert garbage.returncode == 1 and "not a signature document" in garbage.stderr
    (tmp_path / "m.csv.sig").write_text(
        json.dumps(
            {
                "kid": "nobody",
                "alg": "Ed25519",
                "sha256": hashlib.sha256(b"record_id\n").hexdigest(),
                "signature": "AAAA",
            }
        )
    )
    stranger = gateway.cli("audit", "verify-manifest", str(path), check=False)
    assert stranger.returncode == 1 and "not among the database" in stranger.stderr


# --- roles and the log of auditor reads ------------------------------------------------

AUDIT_PATHS = [
    "/_gateway/audit/events",
    "/_gateway/audit/records/rec-1-1-0001",
    "/_gateway/audit/exposure?vendor=acme",
    "/_gateway/audit/exposure/manifest?vendor=acme",
]


@pytest.mark.parametrize("path", AUDIT_PATHS)
def test_only_the_auditor_role_reads_the_access_log(gateway: Gateway, path: str) -> None:
    anonymous = gateway.get(path)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    # ann: admin without auditor; admin-ann: a vendor IdP's token claiming both roles,
    # which count only from trusted issuers; alice, carol: contractors.
    for sub in ("ann", "admin-ann", "alice", "carol"):
        response = gateway.get(path, sub)
        assert response.status_code == 403, (sub, response.text)
        assert response.json()["error"] == "forbidden"
        assert "events" not in response.text and "X-Manifest-Signature" not in response.headers
    assert gateway.get(path, AUDITOR).status_code == 200


def test_auditor_cannot_use_the_admin_api(gateway: Gateway) -> None:
    assert gateway.get("/_gateway/admin/policy", AUDITOR).status_code == 403


def test_every_auditor_read_is_logged(gateway: Gateway, traffic: Traffic) -> None:
    marker = traffic.request_ids[5]
    started = datetime.now(UTC) - timedelta(seconds=1)
    auditor_get(gateway, "/_gateway/audit/events", request_id=marker, limit="5")
    auditor_get(gateway, "/_gateway/audit/records/rec-2-1-0042")
    auditor_get(gateway, "/_gateway/audit/exposure", vendor="globex", **traffic.window())
    manifest = auditor_get(
        gateway, "/_gateway/audit/exposure/manifest", vendor="globex", **traffic.window()
    )
    refused = auditor_get(gateway, "/_gateway/audit/events", decision="maybe")
    assert refused.status_code == 400
    rows = gateway.db.rows(
        "SELECT actor, action, target, after FROM admin_events "
        "WHERE action LIKE 'audit.%' AND time >= :t ORDER BY id",
        t=db_time(gateway, started),
    )
    by_action = defaultdict(list)
    for row in rows:
        assert row.actor == "lab-idp:audrey"
        by_action[row.action].append((json.loads(row.target), json.loads(row.after)))
    assert ({"request_id": marker, "limit": 5}, {"events": 1, "more": False}) in [
        (target, after["result"]) for target, after in by_action["audit.query"]
    ]
    assert any(t == {"record": "rec-2-1-0042", "limit": 1000} for t, _ in by_action["audit.record"])
    exposures = [t for t, _ in by_action["audit.exposure"]]
    assert {"vendor": "globex", **traffic.window()} in exposures
    signed = json.loads(manifest.headers["X-Manifest-Signature"])
    assert any(
        a["result"].get("manifest_sha256") == signed["sha256"]
        for _, a in by_action["audit.exposure"]
    )

    # CLI reads are logged too, under --actor.
    gateway.cli("audit", "query", "--request-id", marker, "--actor", "auditor-cli-test")
    logged = gateway.db.rows(
        "SELECT action, target FROM admin_events WHERE actor = 'auditor-cli-test'"
    )
    assert [(r.action, json.loads(r.target)["request_id"]) for r in logged] == [
        ("audit.query", marker)
    ]
