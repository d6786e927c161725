"""Streamed exports of the access log: CSV, JSON Lines, OCSF 1.3.0 API Activity.

Traffic and HTTP go through the real gateway (`gateway` fixture, SQLite and PostgreSQL);
every assertion is scoped to the time window of this module's own traffic, since the
database is shared with other modules. The bounded-memory test fills a throwaway database
with 200,000 rows and exports it in a fresh process per run, comparing peak RSS and the
Python heap (tracemalloc) at 20,000 and at 200,000 rows.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.audit.ocsf import OCSF_VERSION
from gateway.audit.seal import Checkpoint
from gateway.audit.verify import KeyRing
from tests.conftest import (
    PYTHON,
    ROOT,
    Gateway,
    _drop_postgres_db,
    _make_postgres_db,
    _postgres_server,
)

AUDITOR = "audrey"
DEFINITION_PATH = ROOT / "gateway" / "audit" / f"ocsf_api_activity_{OCSF_VERSION}.json"


def iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- OCSF validation against the vendored class definition ------------------------------

_TYPES = {
    "integer_t": int,
    "long_t": int,
    "timestamp_t": int,
    "port_t": int,
    "string_t": str,
    "username_t": str,
    "ip_t": str,
    "url_t": str,
    "hostname_t": str,
    "email_t": str,
    "object": dict,
}


def ocsf_errors(event: dict[str, Any], definition: dict[str, Any]) -> list[str]:
    """Everything about `event` that the pinned class definition does not allow."""
    errors: list[str] = []

    def check(value: Any, attributes: dict[str, Any], constraints: dict[str, Any], at: str) -> None:
        if not isinstance(value, dict):
            errors.append(f"{at}: not an object")
            return
        for name in value:
            if name not in attributes:
                errors.append(f"{at}.{name}: not an attribute of the class/object")
        for name, spec in attributes.items():
            present = value.get(name) is not None
            if spec["requirement"] == "required" and not present:
                errors.append(f"{at}.{name}: required, missing")
            if not present:
                continue
            items = value[name] if spec.get("is_array") else [value[name]]
            if spec.get("is_array") and not isinstance(value[name], list):
                errors.append(f"{at}.{name}: must be an array")
                continue
            for index, item in enumerate(items):
                where = f"{at}.{name}" + (f"[{index}]" if spec.get("is_array") else "")
                expected = _TYPES.get(spec["type"])
                if expected is not None and (
                    not isinstance(item, expected) or isinstance(item, bool)
                ):
                    errors.append(f"{where}: {item!r} is not a {spec['type']}")
                if "enum" in spec and str(item) not in spec["enum"]:
                    errors.append(f"{where}: {item!r} is not one of {sorted(spec['enum'])}")
                object_type = spec.get("object_type")
                if object_type in definition["objects"]:
                    inner = definition["objects"][object_type]
                    check(item, inner["attributes"], inner.get("constraints", {}), where)
        group = constraints.get("at_least_one")
        if group and not any(value.get(name) is not None for name in group):
            errors.append(f"{at}: needs at least one of {group}")

    check(event, definition["attributes"], {}, "event")
    if event.get("class_uid") != definition["class"]["uid"]:
        errors.append("event.class_uid: not the pinned class")
    if event.get("category_uid") != definition["class"]["category_uid"]:
        errors.append("event.category_uid: not the class's category")
    if event.get("type_uid") != event.get("class_uid", 0) * 100 + event.get("activity_id", -1):
        errors.append("event.type_uid: must be class_uid * 100 + activity_id")
    if (event.get("metadata") or {}).get("version") != definition["ocsf_version"]:
        errors.append("event.metadata.version: not the pinned OCSF version")
    return errors


def test_the_validator_refuses_what_the_class_does_not_allow() -> None:
    definition = json.loads(DEFINITION_PATH.read_text())
    assert definition["ocsf_version"] == OCSF_VERSION == "1.3.0"
    required = {n for n, s in definition["attributes"].items() if s["requirement"] == "required"}
    assert required == {
        "activity_id",
        "actor",
        "api",
        "category_uid",
        "class_uid",
        "metadata",
        "severity_id",
        "src_endpoint",
        "time",
        "type_uid",
    }
    assert ocsf_errors({}, definition)  # nothing at all
    bad = {
        "class_uid": 6003,
        "category_uid": 6,
        "activity_id": 2,
        "type_uid": 600302,
        "severity_id": 1,
        "time": 1,
        "metadata": {"version": "1.3.0", "product": {"name": "x"}},  # no vendor_name
        "actor": {"user": {}},  # neither uid nor name nor account
        "api": {"operation": "read", "request": {}},  # no request uid
        "src_endpoint": {"port": 1},  # no ip/name/...
        "colour": "blue",
    }
    found = "\n".join(ocsf_errors(bad, definition))
    for expected in (
        "product.vendor_name: required",
        "event.actor.user: needs at least one of",
        "api.request.uid: required",
        "event.src_endpoint: needs at least one of",
        "event.colour: not an attribute",
    ):
        assert expected in found, found


# --- traffic through the real gateway ---------------------------------------------------


@dataclass
class Traffic:
    since: datetime
    until: datetime
    request_ids: dict[str, str]

    def window(self) -> dict[str, str]:
        return {"since": iso(self.since), "until": iso(self.until)}


@pytest.fixture(scope="module")
def traffic(gateway: Gateway) -> Traffic:
    # The window is back-dated a little; the previous module's last request must be older.
    time.sleep(0.05)
    since = datetime.now(UTC) - timedelta(milliseconds=5)
    ids = {}
    for name, path, sub, status in (
        ("page", "/api/projects/proj-1/tasks/task-1/records?limit=20", "alice", 200),
        ("denied", "/api/projects/proj-3/tasks/task-1/records", "alice", 403),
        ("filtered", "/api/projects/proj-2/records?offset=298&limit=4", "alice", 200),
        ("globex", "/api/projects/proj-3/tasks/task-1/records?limit=3", "carol", 200),
    ):
        response = gateway.get(path, sub)
        assert response.status_code == status, response.text
        ids[name] = response.headers["X-Request-Id"]
    time.sleep(0.01)
    return Traffic(since, datetime.now(UTC), ids)


def export(gateway: Gateway, sub: str | None = AUDITOR, **params: str) -> requests.Response:
    return gateway.get("/_gateway/audit/export", sub, params=params, stream=True)


def window_rows(gateway: Gateway, traffic: Traffic) -> list[Any]:
    # The shared database's rows in this module's window, as the export must list them.
    since, until = traffic.since, traffic.until
    if gateway.db.kind == "sqlite":
        since, until = since.isoformat(" "), until.isoformat(" ")  # type: ignore[assignment]
    return gateway.db.rows(
        "SELECT id, request_id, record_id, decision, vendor, project FROM access_log "
        "WHERE time >= :s AND time < :u ORDER BY time, id",
        s=since,
        u=until,
    )


def test_jsonl_export_lists_every_row_in_the_window(gateway: Gateway, traffic: Traffic) -> None:
    response = export(gateway, format="jsonl", **traffic.window())
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    assert response.headers["Content-Disposition"].startswith("attachment;")
    lines = [json.loads(line) for line in response.iter_lines() if line]
    expected = window_rows(gateway, traffic)
    assert [line["id"] for line in lines] == [row.id for row in expected]
    assert {line["request_id"] for line in lines} == set(traffic.request_ids.values())
    decisions = {line["decision"] for line in lines}
    assert decisions == {"allow", "deny", "filtered"}
    first = lines[0]
    assert set(first) >= {"time", "chain_id", "seq", "prev_hash", "row_hash", "record_sha256"}
    assert first["time"].endswith("Z")


def test_csv_export_has_the_same_rows(gateway: Gateway, traffic: Traffic) -> None:
    response = export(gateway, format="csv", **traffic.window())
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [int(row["id"]) for row in rows] == [row.id for row in window_rows(gateway, traffic)]
    page = [row for row in rows if row["request_id"] == traffic.request_ids["page"]]
    assert len(page) == 20 and {row["subject"] for row in page} == {"alice"}


def test_ocsf_export_validates_against_the_pinned_class(gateway: Gateway, traffic: Traffic) -> None:
    definition = json.loads(DEFINITION_PATH.read_text())
    response = export(gateway, format="ocsf", **traffic.window())
    assert response.status_code == 200
    events = [json.loads(line) for line in response.iter_lines() if line]
    rows = window_rows(gateway, traffic)
    assert len(events) == len(rows)  # one event per access row, never aggregated
    for event in events:
        assert ocsf_errors(event, definition) == [], event
        assert "count" not in event
    by_request: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_request.setdefault(event["api"]["request"]["uid"], []).append(event)

    page = by_request[traffic.request_ids["page"]]
    assert len(page) == 20
    event = page[0]
    assert event["class_uid"] == 6003 and event["activity_id"] == 2
    assert event["type_uid"] == 600302
    assert event["metadata"]["version"] == "1.3.0"
    assert event["actor"]["user"]["uid"] == "acme-idp:alice"
    assert event["actor"]["user"]["org"]["name"] == "acme"
    assert event["resources"][0]["uid"].startswith("rec-")
    assert event["resources"][0]["group"]["name"] == "proj-1"
    assert event["status_id"] == 1 and event["api"]["operation"] == "read"
    assert event["http_request"]["url"]["path"] == "/api/projects/proj-1/tasks/task-1/records"
    assert event["src_endpoint"]["ip"] == "127.0.0.1"
    assert event["unmapped"]["decision"] == "allow" and event["unmapped"]["policy_version"]
    assert len(event["unmapped"]["record_sha256"]) == 64
    assert {e["resources"][0]["uid"] for e in page} == {
        r.record_id for r in rows if r.request_id == traffic.request_ids["page"]
    }

    (denied,) = by_request[traffic.request_ids["denied"]]
    assert (denied["status_id"], denied["severity_id"]) == (2, 3)
    assert denied["unmapped"]["decision"] == "deny"
    filtered = [e for e in by_request[traffic.request_ids["filtered"]] if e["status_id"] == 2]
    assert filtered and all(e["unmapped"]["decision"] == "filtered" for e in filtered)
    (globex, *_) = by_request[traffic.request_ids["globex"]]
    assert globex["actor"]["user"]["uid"] == "lab-idp:carol"
    assert globex["actor"]["user"]["org"]["name"] == "globex"


def test_filters_narrow_the_export(gateway: Gateway, traffic: Traffic) -> None:
    globex = [
        json.loads(line)
        for line in export(
            gateway, format="jsonl", vendor="globex", **traffic.window()
        ).text.splitlines()
    ]
    assert globex and {row["vendor"] for row in globex} == {"globex"}
    assert {row["request_id"] for row in globex} == {traffic.request_ids["globex"]}
    proj2 = export(gateway, format="jsonl", project="proj-2", **traffic.window()).text
    assert {json.loads(line)["project"] for line in proj2.splitlines()} == {"proj-2"}
    empty = export(gateway, format="csv", vendor="nobody", **traffic.window()).text
    assert empty.splitlines() == [empty.splitlines()[0]] and empty.startswith("id,time,")


def test_cli_export_is_the_same_as_the_http_export(
    gateway: Gateway, traffic: Traffic, tmp_path: Path
) -> None:
    http = export(gateway, format="ocsf", vendor="acme", **traffic.window()).content
    out = tmp_path / "export.ocsf.jsonl"
    window = traffic.window()
    result = gateway.cli(
        "audit", "export", "--format", "ocsf", "--vendor", "acme",
        "--since", window["since"], "--until", window["until"], "--output", str(out),
    )  # fmt: skip
    assert "exported" in result.stderr
    assert out.read_bytes() == http and http
    assert not list(tmp_path.glob("*.partial"))
    stdout = gateway.cli(
        "audit", "export", "--format", "csv", "--since", window["since"],
        "--until", window["until"],
    ).stdout  # fmt: skip
    assert stdout.replace("\r\n", "\n") == export(gateway, format="csv", **window).text.replace(
        "\r\n", "\n"
    )
    bad = gateway.cli("audit", "export", "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "not an ISO 8601 time" in bad.stderr


EXPORT_PATHS = ["/_gateway/audit/export?format=ocsf", "/_gateway/audit/checkpoints"]


@pytest.mark.parametrize("path", EXPORT_PATHS)
def test_only_auditors_may_export(gateway: Gateway, path: str) -> None:
    anonymous = gateway.get(path)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    # ann: admin without auditor; admin-ann: roles from an issuer not trusted for roles;
    # alice and carol: contractors.
    for sub in ("ann", "admin-ann", "alice", "carol"):
        response = gateway.get(path, sub)
        assert response.status_code == 403, (sub, response.text)
        assert response.json()["error"] == "forbidden"
    assert gateway.get(path + ("&" if "?" in path else "?") + "since=2999-01-01", AUDITOR).ok


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"format": "xml"}, "format"),
        ({"since": "last tuesday"}, "since"),
        ({"vendr": "acme"}, "vendr"),  # a typo must not widen the export to everything
        ({"since": "2025-02-01", "until": "2025-01-01"}, "until"),
    ],
)
def test_bad_export_parameters_are_400(
    gateway: Gateway, params: dict[str, str], field: str
) -> None:
    response = export(gateway, **params)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_request" and field in body["fields"]


def test_repeated_parameter_is_400(gateway: Gateway) -> None:
    response = gateway.get("/_gateway/audit/export?vendor=acme&vendor=globex", AUDITOR)
    assert response.status_code == 400 and "vendor" in response.json()["fields"]


def test_exports_are_logged_as_auditor_reads(gateway: Gateway, traffic: Traffic) -> None:
    marker = f"marker-{secrets.token_hex(4)}"
    assert export(gateway, format="csv", vendor=marker).status_code == 200
    rows = gateway.db.rows(
        "SELECT actor, action, target FROM admin_events WHERE action = 'audit.export' "
        "ORDER BY id DESC LIMIT 1"
    )
    assert rows[0].actor == "lab-idp:audrey"
    assert json.loads(rows[0].target)["vendor"] == marker
    assert json.loads(rows[0].target)["format"] == "csv"


def test_checkpoints_are_signed_heads_of_the_gateways_chains(
    gateway: Gateway, traffic: Traffic
) -> None:
    # Each worker seals its chain every 10 s (default interval): wait for one that
    # covers this module's traffic.
    deadline = time.monotonic() + 25
    fresh: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not fresh:
        response = gateway.get(
            "/_gateway/audit/checkpoints", AUDITOR, params={"since": iso(traffic.until)}
        )
        assert response.status_code == 200
        fresh = [json.loads(line) for line in response.text.splitlines()]
        if not fresh:
            time.sleep(1)
    assert fresh, "no checkpoint within 25 s"
    keys = KeyRing(requests.get(gateway.url + "/_gateway/jwks.json", timeout=5).json())
    for data in fresh:
        checkpoint = Checkpoint.from_json(data)
        assert checkpoint.kind == "seal"
        assert checkpoint.verify(keys.check), data
        assert not Checkpoint.from_json({**data, "seq": data["seq"] + 1}).verify(keys.check)
        (head,) = gateway.db.rows(
            "SELECT row_hash FROM access_log WHERE chain_id = :c AND seq = :s",
            c=checkpoint.chain_id,
            s=checkpoint.seq,
        )
        assert head.row_hash == checkpoint.head_hash


# --- bounded memory --------------------------------------------------------------------

BIG = 200_000
SMALL = 20_000

MEASURE = """
import json, resource, sys, tracemalloc
from datetime import datetime
from gateway.audit.export import ExportFilter, export_chunks
from gateway.db.session import make_engine
url, fmt, until, trace = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
engine = make_engine(url)
filters = ExportFilter(until=datetime.fromisoformat(until) if until != "-" else None)
if trace:
    tracemalloc.start()
rows = size = 0
def count(n):
    global rows
    rows += n
with open("/dev/null", "wb") as out:
    for chunk in export_chunks(engine, fmt, filters, on_rows=count):
        size += len(chunk)
        out.write(chunk)
peak = tracemalloc.get_traced_memory()[1] if trace else None
# VmHWM: this process's own peak RSS (ru_maxrss would carry the forking parent's over exec).
try:
    status = open("/proc/self/status").read()
    rss = int(status.split("VmHWM:")[1].split()[0]) * 1024
except (OSError, IndexError):
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"rows": rows, "bytes": size, "rss": rss, "traced_peak": peak}))
"""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def big_log(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, datetime]]:
    from gateway.audit import AuditWriter
    from gateway.db.migrate import upgrade
    from gateway.db.session import make_engine

    server = name = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('big') / 'big.db'}"
    else:
        server = _postgres_server()
        if server is None:
            pytest.skip("PostgreSQL not configured: set GATEWAY_TEST_POSTGRES")
        name = f"gw_export_{secrets.token_hex(4)}"
        url = _make_postgres_db(server, name)
    upgrade(url)
    engine = make_engine(url)
    writer = AuditWriter(engine, batch_max_rows=50_000, commit_timeout=300)
    # Half a millisecond off the second: SQLite keeps times as text, and a whole-second
    # time has no fraction to compare by.
    base = datetime(2025, 1, 1, 0, 0, 0, 500, tzinfo=UTC)
    for start in range(0, BIG, 50_000):
        writer.write(
            [
                {
                    "time": base + timedelta(milliseconds=i),
                    "request_id": f"req-{i // 50}",
                    "issuer": "acme-idp",
                    "subject": f"c{i % 997}",
                    "vendor": f"vendor-{i % 100}",
                    "client_ip": "10.1.2.3",
                    "user_agent": "bench/1.0",
                    "method": "GET",
                    "path": "/api/projects/proj-1/tasks/task-1/records",
                    "project": f"proj-{i % 7}",
                    "task": "task-1",
                    "record_id": f"rec-{i}",
                    "record_sha256": f"{i:064x}",
                    "action": "read",
                    "decision": "allow",
                    "reason": "released",
                    "policy_version": 1,
                    "upstream_status": 200,
                    "bytes": 512,
                }
                for i in range(start, start + 50_000)
            ]
        )
    engine.dispose()
    yield url, base + timedelta(milliseconds=SMALL)
    if server is not None and name is not None:
        _drop_postgres_db(server, name)


def measure(url: str, fmt: str, until: datetime | None, trace: bool = False) -> dict[str, int]:
    result = subprocess.run(
        [
            PYTHON,
            "-c",
            MEASURE,
            url,
            fmt,
            until.isoformat() if until else "-",
            "1" if trace else "0",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        check=True,
    )
    return json.loads(result.stdout)


@pytest.mark.parametrize("fmt", ["ocsf", "jsonl", "csv"])
def test_export_runs_in_bounded_memory(big_log: tuple[str, datetime], fmt: str) -> None:
    url, small_until = big_log
    small = measure(url, fmt, small_until, trace=fmt == "ocsf")
    big = measure(url, fmt, None, trace=fmt == "ocsf")
    assert (small["rows"], big["rows"]) == (SMALL, BIG)
    assert big["bytes"] > 9 * small["bytes"]
    # Ten times the rows (for OCSF ~280 MB of output) and the process is no bigger:
    # a few MB of noise at most, nowhere near the size of the output.
    grown = big["rss"] - small["rss"]
    assert grown < 16 * 2**20, (small, big)
    assert big["rss"] < 200 * 2**20, (small, big)
    if fmt == "ocsf":
        assert big["traced_peak"] < 32 * 2**20, big
        assert big["traced_peak"] < 1.5 * small["traced_peak"] + 2 * 2**20, (small, big)
