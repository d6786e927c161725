"""The catalogue_mismatch detector: records asked for under a path of another project than
the record catalogue places them in (rows the gateway withheld or refused and logged with
reason `catalogue_mismatch` under the record's real project).

In memory on the detector tests' team, then over a real database (SQLite, and PostgreSQL
when GATEWAY_TEST_POSTGRES is set): one high alert per contractor and UTC day, evidence
rows that are that contractor's mismatch rows, no duplicate on a rescan, auto-lock.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from gateway.anomaly.config import AnomalyConfig, AnomalyConfigError, parse_anomaly_table
from gateway.anomaly.detectors import Finding, detect
from gateway.anomaly.memory import MemorySource
from gateway.anomaly.scan import scan
from gateway.anomaly.simulate import write_requests
from gateway.anomaly.store import AlertFilter, get_alert, list_alerts
from gateway.audit.query import iter_events, parse_filter
from gateway.db.migrate import upgrade
from gateway.db.session import make_engine
from tests.conftest import _drop_postgres_db, _make_postgres_db, _postgres_server
from tests.test_anomaly_detectors import CANARY, DAYS, VICTIM, Team, at, check_explained

DETECTOR = "catalogue_mismatch"
OTHER = "acme-idp:a1"  # probes on another day
UNKNOWN_ONLY = "acme-idp:a2"  # only records the catalogue does not know


def nested(project: str, record: str) -> str:
    return f"/api/projects/{project}/tasks/task-1/records/{record}"


def refused(team: Team, key: str, ts: float, record: str, real: str, path: str = "proj-1") -> None:
    """A path naming a record of another project: refused before forwarding."""
    team.request(
        key,
        ts,
        nested(path, record),
        (record,),
        decision="deny",
        reason=DETECTOR,
        project=real,
        task="task-2",
    )


def withheld(team: Team, key: str, ts: float, records: tuple[str, ...], real: str) -> None:
    """Records of another project withheld from a listing of proj-1."""
    team.request(
        key,
        ts,
        "/api/projects/proj-1/tasks/task-1/records",
        records,
        decision="filtered",
        reason=DETECTOR,
        project=real,
        task="task-1",
    )


def unknown(team: Team, key: str, ts: float, record: str) -> None:
    team.request(
        key,
        ts,
        nested("proj-1", record),
        (record,),
        decision="deny",
        reason="catalogue_unknown",
        project="proj-1",
    )


def probed_team() -> Team:
    """The ordinary team; a0 probes on day 14 (three refusals, one listing with two
    records withheld, in different hours), a1 once on day 15, a2 only asks for records
    the catalogue does not know."""
    team = Team()
    refused(team, VICTIM, at(14, 10.0), "rec-3-2-00007", "proj-3")
    refused(team, VICTIM, at(14, 10.1), "rec-3-2-00008", "proj-3")
    refused(team, VICTIM, at(14, 13.5), "rec-2-1-00001", "proj-2", path="proj-4")
    withheld(team, VICTIM, at(14, 15.25), ("rec-2-1-00002", "rec-2-1-00003"), "proj-2")
    refused(team, OTHER, at(15, 11.0), "rec-3-1-00001", "proj-3")
    for i in range(5):
        unknown(team, UNKNOWN_ONLY, at(14, 11 + i / 10), f"rec-9-9-{i:05d}")
    return team


def mismatch_rows(source: MemorySource, key: str) -> list[tuple[int, str, float]]:
    """(row id, request id, time) of a contractor's catalogue_mismatch rows, in order."""
    rows = []
    for request, first_id in zip(source.requests, source.first_ids, strict=True):
        if request.reason == DETECTOR and f"{request.issuer}:{request.subject}" == key:
            rows.extend(
                (first_id + offset, request.request_id, request.ts)
                for offset in range(len(request.record_ids))
            )
    return rows


def found(
    team: Team, config: AnomalyConfig | None = None, since: float = at(11, 0)
) -> list[Finding]:
    source = MemorySource(team.requests, canaries=[CANARY])
    return [
        f
        for f in detect(source, config or AnomalyConfig(), since, at(DAYS, 0))
        if f.detector == DETECTOR
    ]


# --- in memory ---------------------------------------------------------------------------


def test_one_high_alert_per_contractor_and_day_with_its_rows() -> None:
    team = probed_team()
    findings = found(team)
    assert sorted((f.who.key, f.dedup_key) for f in findings) == [
        (VICTIM, f"{DETECTOR}:{VICTIM}:2026-03-16"),
        (OTHER, f"{DETECTOR}:{OTHER}:2026-03-17"),
    ]
    finding = next(f for f in findings if f.who.key == VICTIM)
    check_explained(finding)
    assert finding.severity == "high"
    assert finding.score == 5.0
    rows = mismatch_rows(MemorySource(team.requests), VICTIM)
    assert len(rows) == 5
    assert finding.evidence["rows"] == [row_id for row_id, _, _ in rows]
    assert finding.evidence["request_ids"] == list(dict.fromkeys(r for _, r, _ in rows))
    assert finding.evidence["projects"] == ["proj-2", "proj-3"]
    assert (finding.evidence["refused"], finding.evidence["withheld"]) == (3, 2)
    assert finding.detected_at == rows[0][2]  # the first row already raises it
    assert finding.window_start <= rows[0][2] < rows[-1][2] < finding.window_end
    explanation = finding.explanation
    for cited in (
        "5 record(s)",
        "4 request(s)",
        "3 refused",
        "2 withheld",
        "belong to proj-2, proj-3",
        nested("proj-1", "rec-3-2-00007"),
        nested("proj-4", "rec-2-1-00001"),
    ):
        assert cited in explanation, (cited, explanation)
    assert finding.project is None  # two real projects
    # a1's single probe: one row is enough by default, under its one real project.
    single = next(f for f in findings if f.who.key == OTHER)
    assert (single.score, single.project, single.severity) == (1.0, "proj-3", "high")


def test_quiet_without_mismatch_rows() -> None:
    team = Team()
    for i in range(5):
        unknown(team, UNKNOWN_ONLY, at(14, 11 + i / 10), f"rec-9-9-{i:05d}")
    team.deny(VICTIM, at(14, 12), "/api/projects/proj-9/tasks")  # an ordinary refusal
    assert found(team) == []
    assert [f.who.key for f in found(probed_team())].count(UNKNOWN_ONLY) == 0


def test_rows_on_two_days_are_two_alerts_and_more_rows_one() -> None:
    team = Team()
    for i in range(30):
        refused(team, VICTIM, at(14, 9 + i / 10), f"rec-3-2-{i:05d}", "proj-3")
    refused(team, VICTIM, at(15, 9), "rec-3-2-00100", "proj-3")
    findings = found(team)
    assert [f.dedup_key.rsplit(":", 1)[1] for f in findings] == ["2026-03-16", "2026-03-17"]
    assert findings[0].score == 30.0
    assert len(findings[0].evidence["rows"]) == 20  # at most 20 rows; the query lists all
    assert "30 record(s)" in findings[0].explanation and "and 27 more" in findings[0].explanation


def test_thresholds_and_severity_from_the_config() -> None:
    team = Team()
    for i in range(3):
        refused(team, VICTIM, at(14, 9 + i), f"rec-3-2-{i:05d}", "proj-3")
    config = AnomalyConfig(catalogue_mismatch_min_rows=4)
    assert found(team, config) == []
    config = AnomalyConfig(catalogue_mismatch_min_rows=3, catalogue_mismatch_severity="critical")
    (finding,) = found(team, config)
    assert finding.severity == "critical"
    assert finding.detected_at == at(14, 11)  # when the third row was logged


def test_a_scan_starting_mid_day_counts_the_whole_day() -> None:
    team = probed_team()
    whole = {f.dedup_key: f.as_dict() for f in found(team)}
    # Since 12:00 of day 14: rows before it still count, the alert stays as it was.
    later = {f.dedup_key: f.as_dict() for f in found(team, since=at(14, 12))}
    assert later == whole
    # Since 16:00 of day 14, after a0's last probe: that day was an earlier scan's.
    assert [f.who.key for f in found(team, since=at(14, 16))] == [OTHER]


def test_config_keys_are_validated() -> None:
    defaults = AnomalyConfig()
    assert (defaults.catalogue_mismatch_min_rows, defaults.catalogue_mismatch_severity) == (
        1,
        "high",
    )
    config = parse_anomaly_table(
        {
            "catalogue_mismatch_min_rows": 2,
            "catalogue_mismatch_severity": "medium",
            "auto_lock_detectors": [DETECTOR, "canary_touch"],
        }
    )
    assert config.catalogue_mismatch_min_rows == 2
    assert config.catalogue_mismatch_severity == "medium"
    assert config.auto_lock_detectors == (DETECTOR, "canary_touch")
    for bad in (
        {"catalogue_mismatch_min_rows": 0},
        {"catalogue_mismatch_min_rows": "1"},
        {"catalogue_mismatch_severity": "dire"},
        {"auto_lock_detectors": ["catalogue_mismatches"]},
    ):
        with pytest.raises(AnomalyConfigError):
            parse_anomaly_table(bad)


# --- over a database ---------------------------------------------------------------------


@dataclass
class ProbedDb:
    url: str
    kind: str
    engine: Engine


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def probed_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProbedDb]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('catalogue') / 'scan.db'}"
        server = name = None
    else:
        server = _postgres_server()
        if server is None:
            pytest.skip("PostgreSQL not configured: set GATEWAY_TEST_POSTGRES")
        name = f"gw_catalogue_{secrets.token_hex(4)}"
        url = _make_postgres_db(server, name)
    upgrade(url)
    engine = make_engine(url)
    write_requests(engine, probed_team().requests, chain="catalogue-test")
    yield ProbedDb(url, request.param, engine)
    engine.dispose()
    if server is not None and name is not None:
        _drop_postgres_db(server, name)


SINCE = datetime.fromtimestamp(at(11, 0), UTC)
UNTIL = datetime.fromtimestamp(at(DAYS, 0), UTC)


def clear_alerts(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM anomaly_alerts WHERE detector = :d"), {"d": DETECTOR})


def test_scan_stores_one_alert_per_contractor_and_day(probed_db: ProbedDb) -> None:
    engine = probed_db.engine
    clear_alerts(engine)
    first = scan(engine, AnomalyConfig(), since=SINCE, until=UNTIL)
    alerts = list_alerts(engine, AlertFilter(detector=[DETECTOR]))
    assert sorted(a["contractor"] for a in alerts) == [VICTIM, OTHER]
    alert = next(a for a in alerts if a["contractor"] == VICTIM)
    assert alert["severity"] == "high" and alert["status"] == "open"
    assert alert["dedup_key"] == f"{DETECTOR}:{VICTIM}:2026-03-16"

    # The SQL source gives what the in-memory one gives, down to the evidence row ids.
    expected = found(probed_team())
    stored = [f for f in first.findings if f.detector == DETECTOR]
    assert [f.as_dict() for f in stored] == [f.as_dict() for f in expected]

    # Evidence rows are exactly a0's catalogue_mismatch rows; the query lists them all.
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT id, request_id FROM access_log WHERE issuer = 'acme-idp'"
                " AND subject = 'a0' AND reason = :reason ORDER BY time, id"
            ),
            {"reason": DETECTOR},
        ).all()
    evidence = alert["evidence"]
    assert len(rows) == 5
    assert evidence["rows"] == [r.id for r in rows]
    assert evidence["request_ids"] == list(dict.fromkeys(r.request_id for r in rows))
    listed = {e["id"] for e in iter_events(engine, parse_filter(evidence["query"]))}
    assert {r.id for r in rows} <= listed

    # A rescan adds nothing and changes nothing.
    again = scan(engine, AnomalyConfig(), since=SINCE, until=UNTIL)
    ids = {a["id"] for a in alerts}
    assert not ids & set(again.stored.new) and not ids & set(again.stored.updated)
    assert ids <= set(again.stored.unchanged)
    assert len(list_alerts(engine, AlertFilter(detector=[DETECTOR]))) == 2


def test_scan_auto_locks_on_a_mismatch(probed_db: ProbedDb) -> None:
    from gateway.lockout import lift_lock

    engine = probed_db.engine
    clear_alerts(engine)
    config = AnomalyConfig(auto_lock_detectors=(DETECTOR,), auto_lock_min_severity="high")
    result = scan(engine, config, since=SINCE, until=UNTIL)
    try:
        assert sorted(lock["target"] for lock in result.auto_locks) == [VICTIM, OTHER]
        for lock in result.auto_locks:
            assert get_alert(engine, lock["alert_id"])["detector"] == DETECTOR
    finally:
        for lock in result.auto_locks:
            lift_lock(engine, lock["lock_id"], actor="test", reason="test cleanup")


def test_cli_lists_the_detector(probed_db: ProbedDb, tmp_path: Path) -> None:
    if probed_db.kind != "sqlite":
        pytest.skip("the CLI is exercised once, on SQLite")
    from click.testing import CliRunner

    from gateway.cli import main

    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[database]
url = "{probed_db.url}"

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
    env = {"GATEWAY_CONFIG": str(config)}
    runner = CliRunner()
    clear_alerts(probed_db.engine)
    scanned = runner.invoke(
        main,
        ["anomalies", "scan", "--since", SINCE.isoformat(), "--until", UNTIL.isoformat()],
        env=env,
    )
    assert scanned.exit_code == 0, scanned.output
    listed = runner.invoke(main, ["anomalies", "list", "--detector", DETECTOR, "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    alerts = json.loads(listed.stdout)
    assert sorted(a["contractor"] for a in alerts) == [VICTIM, OTHER]
    shown = runner.invoke(main, ["anomalies", "show", str(alerts[0]["id"])], env=env)
    assert "gateway audit query" in shown.stdout and "--contractor" in shown.stdout
