"""Scans over a real database (SQLite, and PostgreSQL when GATEWAY_TEST_POSTGRES is set):
the SQL rollup gives the same findings as the in-memory aggregation, rescans add no
alerts, auditor changes survive rescans, auto-lock, and the CLI around it.

Each test database is the scan's own (the shared gateway's log is left alone).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from gateway.anomaly.config import AnomalyConfig
from gateway.anomaly.detectors import detect
from gateway.anomaly.memory import MemorySource
from gateway.anomaly.scan import scan
from gateway.anomaly.simulate import write_requests
from gateway.anomaly.store import AlertFilter, get_alert, list_alerts, update_alert
from gateway.db.migrate import upgrade
from gateway.db.session import make_engine
from tests.conftest import GATEWAY_BIN, ROOT, _drop_postgres_db, _make_postgres_db, _postgres_server
from tests.test_anomaly_detectors import CANARY, DAYS, PLACES, VICTIM, Team, at


@dataclass
class ScanDb:
    url: str
    kind: str
    engine: Engine


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def scan_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ScanDb]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('anomaly') / 'scan.db'}"
        server = name = None
    else:
        server = _postgres_server()
        if server is None:
            pytest.skip("PostgreSQL not configured: set GATEWAY_TEST_POSTGRES")
        name = f"gw_anomaly_{secrets.token_hex(4)}"
        url = _make_postgres_db(server, name)
    upgrade(url)
    engine = make_engine(url)
    team = attacked_team()
    write_requests(
        engine,
        team.requests,
        canaries=[CANARY],
        chain="anomaly-test",
        canaries_since=datetime.fromtimestamp(at(0, 0), UTC),
    )
    yield ScanDb(url, request.param, engine)
    engine.dispose()
    if server is not None and name is not None:
        _drop_postgres_db(server, name)


def attacked_team() -> Team:
    team = Team()
    for i in range(8):  # bulk scrape
        team.page(VICTIM, at(14, 10 + i / 8), 100 * i, 100)
    team.read("acme-idp:a1", at(15, 12.5), 9990)  # canary
    for i in range(3):  # after a lock
        team.request(
            "acme-idp:a2",
            at(16, 12 + i / 10),
            "/api/records/rec-1-1-00001",
            ("rec-1-1-00001",),
            decision="deny",
            reason="locked:77",
        )
    for i in range(30):  # probing
        team.deny("acme-idp:a3", at(17, 10 + i / 90), f"/api/admin/thing-{i}", "unknown_route")
    # Office in Berlin all day, and an hour from Manila in between: impossible travel.
    team.work("acme-idp:a4", 15, hours=range(13, 14), rate=6, ip="45.80.1.2")
    return team


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("places") / "locations.csv"
    path.write_text(PLACES)
    return str(path)


SINCE = datetime.fromtimestamp(at(11, 0), UTC)
UNTIL = datetime.fromtimestamp(at(DAYS, 0), UTC)


def test_scan_matches_memory_and_is_idempotent(scan_db: ScanDb, places: str) -> None:
    config = AnomalyConfig(ip_locations=places)
    first = scan(scan_db.engine, config, since=SINCE, until=UNTIL)
    detectors = {f.detector for f in first.findings}
    expected_detectors = {"volume_spike", "canary_touch", "locked_attempt", "probing"}
    assert expected_detectors | {"impossible_travel"} <= detectors
    assert len(first.stored.new) == len(first.findings)
    assert first.rollup["rollup_rows"] > 0

    # The SQL rollup and the in-memory aggregation give the very same findings,
    # down to the evidence row ids.
    team = attacked_team()
    expected = detect(
        MemorySource(team.requests, canaries=[CANARY]), config, SINCE.timestamp(), UNTIL.timestamp()
    )
    assert [f.as_dict() for f in first.findings] == [f.as_dict() for f in expected]

    # Evidence rows are the contractor's own access-log rows.
    scrape = next(f for f in first.findings if f.detector == "volume_spike")
    ids = ",".join(str(int(i)) for i in scrape.evidence["rows"])
    owners = (
        scan_db.engine.connect()
        .execute(
            text(f"SELECT DISTINCT issuer, subject FROM access_log WHERE id IN ({ids})")  # noqa: S608
        )
        .all()
    )
    assert [tuple(o) for o in owners] == [("acme-idp", "a0")]

    # Rescanning adds nothing; an auditor's status and notes survive a rescan.
    alert_id = first.stored.new[0]
    update_alert(scan_db.engine, alert_id, actor="test", status="acknowledged", notes="looking")
    again = scan(scan_db.engine, config, since=SINCE, until=UNTIL)
    assert again.stored.new == [] and again.stored.updated == []
    assert sorted(again.stored.unchanged) == sorted(first.stored.new)
    alert = get_alert(scan_db.engine, alert_id)
    assert (alert["status"], alert["notes"]) == ("acknowledged", "looking")

    # A scan over a later window with a rebuilt rollup still finds the same keys.
    later = scan(
        scan_db.engine,
        config,
        since=datetime.fromtimestamp(at(13, 0), UTC),
        until=UNTIL,
        rebuild=True,
    )
    assert later.stored.new == []
    assert len(list_alerts(scan_db.engine, AlertFilter(detector=["probing"]))) == 1


def test_scan_auto_locks_configured_detectors(scan_db: ScanDb) -> None:
    from gateway.anomaly.rollup import SqlSource
    from gateway.lockout import lift_lock

    config = AnomalyConfig(auto_lock_detectors=("canary_touch",), auto_lock_min_severity="high")
    with scan_db.engine.begin() as connection:
        connection.execute(text("DELETE FROM anomaly_alerts WHERE detector = 'canary_touch'"))
    result = scan(scan_db.engine, config, since=SINCE, until=UNTIL)
    try:
        assert [lock["target"] for lock in result.auto_locks] == ["acme-idp:a1"]
        alert = get_alert(scan_db.engine, result.auto_locks[0]["alert_id"])
        assert alert["lock_id"] == result.auto_locks[0]["lock_id"]
        assert alert["status"] == "acknowledged"
        # Nothing else was locked: the other detectors are not configured for it.
        assert len(SqlSource(scan_db.engine).canary_hits(at(0, 0), at(DAYS, 0))) == 1
    finally:
        for lock in result.auto_locks:
            lift_lock(scan_db.engine, lock["lock_id"], actor="test", reason="test cleanup")


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    """The real `gateway` binary (once: it is slow to start)."""
    return subprocess.run(
        [GATEWAY_BIN, "anomalies", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "GATEWAY_CONFIG": str(config)},
        timeout=60,
    )


def invoke(config: Path, *args: str) -> Any:
    """The same commands in-process."""
    from click.testing import CliRunner

    from gateway.cli import main

    return CliRunner().invoke(main, ["anomalies", *args], env={"GATEWAY_CONFIG": str(config)})


def test_cli(scan_db: ScanDb, tmp_path: Path) -> None:
    if scan_db.kind != "sqlite":
        pytest.skip("the CLI is exercised once, on SQLite")
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[database]
url = "{scan_db.url}"

[[issuers]]
name = "acme-idp"
issuer = "https://idp.acme.example"
audience = "https://gateway.test"
vendor = "acme"

[upstream]
url = "http://127.0.0.1:9"

[[routes]]
methods = ["GET"]
path = "/api/projects/{{project}}/tasks"
action = "read"

[anomaly]
probe_min_distinct_paths = 50
"""
    )
    scanned = run_cli(
        config,
        "scan",
        "--since",
        "2026-03-13T00:00:00Z",
        "--until",
        "2026-03-21T00:00:00Z",
        "--json",
    )
    assert scanned.returncode == 0, scanned.stderr
    summary = json.loads(scanned.stdout)
    assert summary["findings"] >= 3
    assert "scanning contractors" in scanned.stderr  # the progress bar
    listed = invoke(config, "list", "--detector", "canary_touch", "--json")
    alerts = json.loads(listed.stdout)
    assert [a["contractor"] for a in alerts] == ["acme-idp:a1"]
    shown = invoke(config, "show", str(alerts[0]["id"]))
    assert "canary record rec-1-1-09990" in shown.stdout and "gateway audit query" in shown.stdout
    updated = invoke(
        config,
        "update",
        str(alerts[0]["id"]),
        "--status",
        "resolved",
        "--assignee",
        "audrey",
        "--actor",
        "test",
    )
    assert updated.exit_code == 0 and "resolved" in updated.stdout
    # Bad input: one line, exit status 1 or 2, no traceback.
    for args, message in [
        (("show", "abc"), "is not an alert id"),
        (("show", "99999"), "no alert 99999"),
        (("update", str(alerts[0]["id"])), "give at least one of"),
        (("list", "--detector", "telepathy"), "unknown detector"),
        (("scan", "--since", "yesterday"), "neither an ISO 8601 time"),
        (("escalate", "99999", "--reason", "x"), "no alert 99999"),
    ]:
        failed = invoke(config, *args)
        assert failed.exit_code in (1, 2) and message in failed.stderr, (args, failed.stderr)
        assert failed.exception is None or isinstance(failed.exception, SystemExit)
    canary = invoke(config, "canary", "add", "rec-1-1-00042", "--reason", "bait", "--actor", "t")
    assert canary.exit_code == 0, canary.stderr
    again = invoke(config, "canary", "add", "rec-1-1-00042", "--reason", "bait")
    assert again.exit_code == 1 and "already a canary record" in again.stderr
    assert "rec-1-1-00042" in invoke(config, "canary", "list").stdout
    # A bad [anomaly] table is refused with the key named.
    config.write_text(config.read_text().replace("= 50", '= "many"'))
    refused = invoke(config, "scan")
    assert refused.exit_code == 1 and "anomaly.probe_min_distinct_paths" in refused.stderr


def test_simulate_ends_by_now_so_a_plain_scan_finds_it(tmp_path: Path) -> None:
    """`simulate` writes nothing unasked, shows progress, and its days end by now."""
    db_url = f"sqlite:///{tmp_path / 'sim.db'}"
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[database]
url = "{db_url}"

[[issuers]]
name = "acme-idp"
issuer = "https://idp.acme.example"
audience = "https://gateway.test"
vendor = "acme"

[upstream]
url = "http://127.0.0.1:9"

[[routes]]
methods = ["GET"]
path = "/api/projects/{{project}}/tasks"
action = "read"
"""
    )
    size = ["--seed", "3", "--contractors", "20", "--days", "24", "--output", db_url]
    refused = invoke(config, "simulate", *size)
    assert refused.exit_code != 0 and "--labels" in refused.output
    labels = tmp_path / "labels.json"
    made = invoke(config, "simulate", *size, "--labels", str(labels))
    assert made.exit_code == 0, made.output
    assert "simulating contractors" in made.output and "writing rows" in made.output
    document = json.loads(labels.read_text())
    end = datetime.fromisoformat(document["end"].replace("Z", "+00:00"))
    now = datetime.now(UTC)
    assert now - timedelta(days=7) < end <= now
    scanned = invoke(config, "scan", "--json", "--quiet")
    assert scanned.exit_code == 0, scanned.output
    assert json.loads(scanned.output)["new_alerts"], scanned.output
