"""Each detector on a small labelled scenario: it fires on the attack and stays quiet on
the benign twin (the hard case that looks most like it).

A deterministic team of six contractors works weekdays 09-17 UTC for three weeks
(fetch a record by id, annotate most of them); each scenario adds to it.
"""

from __future__ import annotations

import random
import statistics
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.anomaly.config import (
    AnomalyConfig,
    AnomalyConfigError,
    load_anomaly_config,
    parse_anomaly_table,
)
from gateway.anomaly.data import Request, classify
from gateway.anomaly.detectors import Finding, detect, median_without, sequence_stats, spearman
from gateway.anomaly.locations import load_locations
from gateway.anomaly.memory import MemorySource

START = datetime(2026, 3, 2, tzinfo=UTC).timestamp()  # a Monday
DAYS = 19  # through the Friday of the third week
TEAM = 6
VICTIM = "acme-idp:a0"
CANARY = "rec-1-1-09990"


def at(day: int, hour: float) -> float:
    return START + day * 86400 + hour * 3600


def weekday(day: int) -> bool:
    return day % 7 < 5


class Team:
    """Requests of a team; `add_*` helpers append scenario traffic."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.requests: list[Request] = []
        self.counter = 0
        self.queues: dict[str, list[int]] = {}
        self.cursor: dict[str, int] = {}
        for i in range(TEAM):
            key = f"acme-idp:a{i}"
            self.queues[key] = self.rng.sample(range(8000), 2000)
            self.cursor[key] = 0
            for day in range(DAYS):
                if weekday(day):
                    self.work(key, day)

    # --- building blocks -------------------------------------------------------------

    def _id(self) -> str:
        self.counter += 1
        return f"t{self.counter:010d}"

    def request(
        self,
        key: str,
        ts: float,
        path: str,
        records: tuple[str | None, ...],
        *,
        method: str = "GET",
        action: str | None = "read",
        decision: str = "allow",
        reason: str | None = "released",
        ip: str = "203.0.113.10",
        project: str | None = "proj-1",
        task: str | None = "task-1",
    ) -> None:
        issuer, _, subject = key.partition(":")
        self.requests.append(
            Request(
                ts,
                self._id(),
                issuer,
                subject,
                "acme",
                ip,
                "LabelDesk/4.2",
                method,
                path,
                project,
                task,
                action,
                decision,
                reason,
                200 if decision == "allow" else None,
                records,
            )
        )

    def read(self, key: str, ts: float, n: int, *, task: int = 1, ip: str = "203.0.113.10") -> None:
        record = f"rec-1-{task}-{n:05d}"
        self.request(key, ts, f"/api/records/{record}", (record,), ip=ip, task=f"task-{task}")

    def annotate(self, key: str, ts: float, n: int, *, ip: str = "203.0.113.10") -> None:
        record = f"rec-1-1-{n:05d}"
        path = f"/api/projects/proj-1/tasks/task-1/records/{record}/annotations"
        self.request(key, ts, path, (record,), method="POST", action="annotate", ip=ip)

    def page(self, key: str, ts: float, first: int, size: int, *, task: int = 1) -> None:
        records = tuple(f"rec-1-{task}-{n:05d}" for n in range(first, first + size))
        path = f"/api/projects/proj-1/tasks/task-{task}/records"
        self.request(key, ts, path, records, task=f"task-{task}")

    def deny(self, key: str, ts: float, path: str, reason: str = "policy_denied") -> None:
        self.request(
            key, ts, path, (None,), decision="deny", reason=reason, project=None, task=None
        )

    def work(
        self,
        key: str,
        day: int,
        *,
        hours: range = range(9, 17),
        rate: float = 20,
        annotate: float = 0.85,
        ip: str = "203.0.113.10",
        extra_reads: float = 0.0,
    ) -> None:
        """A day of annotation work: records by id from a shuffled queue, most annotated;
        `extra_reads` more records per record worked, fetched and never annotated."""
        rng = self.rng
        for hour in hours:
            for _ in range(max(0, round(rng.gauss(rate, rate**0.5)))):
                ts = at(day, hour + rng.random() * 0.95)
                queue = self.queues[key]
                n = queue[self.cursor[key] % len(queue)]
                self.cursor[key] += 1
                self.read(key, ts, n, ip=ip)
                if rng.random() < annotate:
                    self.annotate(key, ts + 30, n, ip=ip)
                extra = extra_reads
                while extra > 0:
                    if extra >= 1 or rng.random() < extra:
                        self.read(key, ts + 5, rng.randrange(8000), ip=ip)
                    extra -= 1

    # --- running the detectors -------------------------------------------------------

    def findings(self, detector: str, since_day: int = 11, **config: object) -> list[Finding]:
        source = MemorySource(self.requests, canaries=[CANARY])
        settings = AnomalyConfig(**config)  # type: ignore[arg-type]
        found = detect(source, settings, at(since_day, 0), at(DAYS, 0), detectors=[detector])
        return [f for f in found if f.detector == detector]


def on(findings: list[Finding], key: str = VICTIM) -> list[Finding]:
    return [f for f in findings if f.who.key == key]


def check_explained(finding: Finding) -> None:
    """Explanations cite numbers; evidence links rows and says how to list them all."""
    assert any(ch.isdigit() for ch in finding.explanation)
    assert finding.evidence["rows"], finding.evidence
    assert finding.evidence["query"]["since"] <= finding.evidence["query"]["until"]
    assert finding.dedup_key.startswith(f"{finding.detector}:{finding.who.key}:")


@pytest.fixture
def team() -> Team:
    return Team()


# --- the team alone is quiet -----------------------------------------------------------


def test_ordinary_team_raises_nothing(team: Team) -> None:
    source = MemorySource(team.requests, canaries=[CANARY])
    assert detect(source, AnomalyConfig(), at(8, 0), at(DAYS, 0)) == []


# --- volume spike ----------------------------------------------------------------------


def test_volume_spike_fires_on_bulk_scrape(team: Team) -> None:
    for i in range(8):
        team.page(VICTIM, at(14, 10 + i / 8), 100 * i, 100)
    found = on(team.findings("volume_spike"))
    assert len(found) == 1
    finding = found[0]
    assert finding.severity == "critical"
    assert "fetched" in finding.explanation and "own median" in finding.explanation
    assert "peers (acme/proj-1" in finding.explanation
    check_explained(finding)


def test_volume_spike_quiet_on_team_deadline_surge(team: Team) -> None:
    # The whole project works 1.6x faster and longer for two days; the victim a bit more.
    for day in (14, 15):
        for i in range(TEAM):
            key = f"acme-idp:a{i}"
            team.work(key, day, hours=range(9, 20), rate=12 if key != VICTIM else 20)
    assert on(team.findings("volume_spike")) == []


def test_volume_spike_new_contractor_against_peers_only(team: Team) -> None:
    newcomer = "acme-idp:a9"
    team.queues[newcomer], team.cursor[newcomer] = list(range(8000)), 0
    for day in (14, 15):
        team.work(newcomer, day, rate=16)
    for i in range(6):
        team.page(newcomer, at(16, 11 + i / 6), 100 * i, 100)
    found = on(team.findings("volume_spike"), newcomer)
    assert len(found) == 1
    assert "new contractor" in found[0].explanation and "peers only" in found[0].explanation


def test_volume_spike_quiet_on_new_contractor_at_normal_pace(team: Team) -> None:
    newcomer = "acme-idp:a9"
    team.queues[newcomer], team.cursor[newcomer] = list(range(8000)), 0
    for day in (14, 15, 16):
        team.work(newcomer, day, rate=24)
    assert on(team.findings("volume_spike"), newcomer) == []


# --- slow exfiltration -----------------------------------------------------------------


def test_slow_exfiltration_fires_on_sustained_unworked_reads() -> None:
    team = Team()
    attack_days = [d for d in range(11, DAYS) if weekday(d)]
    # Rebuild the victim's days with 0.8 extra records per record worked, never annotated.
    team.requests = [
        r for r in team.requests if not (r.subject == "a0" and r.ts >= at(attack_days[0], 0))
    ]
    for day in attack_days:
        team.work(VICTIM, day, extra_reads=0.8)
    found = on(team.findings("slow_exfiltration", since_day=11))
    assert found, "a 1.8x sustained rise was not flagged"
    finding = found[0]
    assert "EWMA" in finding.explanation and "not worked on" in finding.explanation
    # No single hour of it is a volume spike.
    assert on(team.findings("volume_spike", since_day=11)) == []
    check_explained(finding)


def test_slow_exfiltration_quiet_on_project_ramp_up() -> None:
    team = Team()
    ramp_days = [d for d in range(11, DAYS) if weekday(d)]
    team.requests = [r for r in team.requests if r.ts < at(ramp_days[0], 0)]
    for day in ramp_days:
        for i in range(TEAM):
            team.work(f"acme-idp:a{i}", day, rate=36)  # everyone 1.8x, all of it annotated
    assert team.findings("slow_exfiltration", since_day=11) == []


# --- breadth ---------------------------------------------------------------------------


def test_breadth_fires_on_many_tasks(team: Team) -> None:
    for task in range(1, 13):
        for k in range(3):
            team.read(VICTIM, at(14, 11 + task / 13 + k / 100), 100 + k, task=task)
    found = on(team.findings("breadth"))
    assert len(found) == 1
    assert "12 distinct project/tasks" in found[0].explanation
    check_explained(found[0])


def test_breadth_quiet_on_reassignment(team: Team) -> None:
    for k in range(60):
        team.read(VICTIM, at(14, 9 + k / 10), 2000 + k, task=2)
    assert on(team.findings("breadth")) == []


# --- enumeration -----------------------------------------------------------------------


def test_enumeration_fires_on_sequential_ids(team: Team) -> None:
    for i in range(220):
        team.read(VICTIM, at(15, 2 + i / 230), 5000 + i)
    found = on(team.findings("enumeration"))
    assert len(found) == 1
    assert "consecutive ids" in found[0].explanation
    assert "rec-1-1-05000..rec-1-1-05219" in found[0].explanation
    check_explained(found[0])


def test_enumeration_quiet_on_contiguous_block_at_human_pace(team: Team) -> None:
    # Reassigned a contiguous block, worked through in order: 25 an hour, all annotated.
    n = 6000
    for hour in range(9, 17):
        for k in range(25):
            ts = at(15, hour + k / 26)
            team.read(VICTIM, ts, n)
            team.annotate(VICTIM, ts + 20, n)
            n += 1
    assert on(team.findings("enumeration")) == []


def test_sequence_statistics() -> None:
    from gateway.anomaly.data import DetailRow

    rows = [
        DetailRow(i, float(i), f"r{i}", f"rec-1-1-{100 + 2 * i:05d}", "/", None, None)
        for i in range(50)
    ]
    stats = sequence_stats(rows, max_stride=3)
    assert stats["run"] == 50 and stats["median_step"] == 2 and stats["spearman"] > 0.99
    # One list page of 50 consecutive records is one request, not a run across requests.
    page = [DetailRow(i, 0.0, "same", f"rec-1-1-{i:05d}", "/", None, None) for i in range(50)]
    assert sequence_stats(page, max_stride=3)["run"] == 1
    assert spearman([5, 4, 3, 2, 1]) == pytest.approx(-1.0)


# --- probing ---------------------------------------------------------------------------


def test_probing_fires_on_refusals_over_many_paths(team: Team) -> None:
    for i in range(30):
        path = f"/api/projects/proj-{i % 9 + 2}/tasks/task-{i % 4}/records"
        if i % 3 == 0:
            path = f"/api/admin/thing-{i}"
        reason = "unknown_route" if i % 3 == 0 else "policy_denied"
        team.deny(VICTIM, at(14, 10 + i / 90), path, reason)
    found = on(team.findings("probing"))
    assert len(found) == 1
    assert "30 refused requests over" in found[0].explanation
    assert "policy_denied" in found[0].explanation
    check_explained(found[0])


def test_probing_quiet_on_a_client_retrying_one_path(team: Team) -> None:
    for i in range(60):
        team.deny(VICTIM, at(14, 10 + i / 60), "/api/projects/proj-7/tasks")
    assert on(team.findings("probing")) == []


def test_probing_by_address_when_unauthenticated(team: Team) -> None:
    for i in range(20):
        team.requests.append(
            Request(
                at(14, 3 + i / 60),
                f"anon{i}",
                None,
                None,
                None,
                "185.1.2.3",
                "curl/8",
                "GET",
                f"/api/x{i}",
                None,
                None,
                None,
                "deny",
                "invalid_token",
                None,
                (None,),
            )
        )
    found = on(team.findings("probing"), "ip:185.1.2.3")
    assert len(found) == 1 and found[0].who.client_ip == "185.1.2.3"


# --- credential sharing ----------------------------------------------------------------


def test_credential_sharing_fires_on_two_addresses_at_once(team: Team) -> None:
    team.work(VICTIM, 14, hours=range(10, 13), rate=15, ip="45.80.1.2")
    found = on(team.findings("credential_sharing"))
    assert len(found) == 1
    assert "45.80.1.2" in found[0].explanation and "203.0.113.10" in found[0].explanation
    check_explained(found[0])


def test_credential_sharing_quiet_on_moving_between_addresses(team: Team) -> None:
    team.requests = [
        r for r in team.requests if not (r.subject == "a0" and at(14, 0) <= r.ts < at(15, 0))
    ]
    team.work(VICTIM, 14, hours=range(9, 13))
    team.work(VICTIM, 14, hours=range(13, 17), ip="198.51.100.77")  # home after lunch
    assert on(team.findings("credential_sharing")) == []


# --- impossible travel -------------------------------------------------------------------

PLACES = """network,latitude,longitude,place
203.0.113.0/24,52.52,13.40,Berlin office
198.51.100.0/24,52.39,13.06,Potsdam
45.80.0.0/16,14.60,120.98,Manila
45.80.9.0/24,-33.87,151.21,Sydney
2001:db8::/32,40.71,-74.01,New York
"""


@pytest.fixture
def places(tmp_path: Path) -> str:
    path = tmp_path / "locations.csv"
    path.write_text(PLACES)
    return str(path)


def without_victim_on(team: Team, day: int) -> None:
    team.requests = [
        r for r in team.requests if not (r.subject == "a0" and at(day, 0) <= r.ts < at(day + 1, 0))
    ]


def test_impossible_travel_fires_on_a_jump_across_the_world(team: Team, places: str) -> None:
    without_victim_on(team, 14)
    team.work(VICTIM, 14, hours=range(9, 12))
    team.work(VICTIM, 14, hours=range(12, 14), ip="45.80.1.2")  # Manila within the hour
    found = on(team.findings("impossible_travel", ip_locations=places))
    assert len(found) == 1
    finding = found[0]
    assert "Berlin office (203.0.113.10)" in finding.explanation
    assert "Manila (45.80.1.2)" in finding.explanation
    assert 9_000 < finding.evidence["km"] < 11_000
    check_explained(finding)
    # Both sides of the jump are in the evidence rows' window.
    assert finding.window_start < at(14, 12) < finding.window_end


def test_impossible_travel_quiet_on_a_real_flight_and_a_nearby_home(
    team: Team, places: str
) -> None:
    without_victim_on(team, 14)
    without_victim_on(team, 15)
    team.work(VICTIM, 14, hours=range(9, 12))
    # Phone at home 30 km away while the laptop is still at the office: the same area.
    team.work(VICTIM, 14, hours=range(11, 15), ip="198.51.100.7")
    team.work(VICTIM, 15, hours=range(9, 12), ip="45.80.1.2")  # Manila, 18 h later
    assert on(team.findings("impossible_travel", ip_locations=places)) == []


def test_impossible_travel_needs_known_locations(team: Team, places: str) -> None:
    without_victim_on(team, 14)
    team.work(VICTIM, 14, hours=range(9, 12))
    team.work(VICTIM, 14, hours=range(12, 14), ip="192.0.2.99")  # not in the table
    assert on(team.findings("impossible_travel", ip_locations=places)) == []
    team.work(VICTIM, 14, hours=range(14, 15), ip="45.80.1.2")
    assert on(team.findings("impossible_travel")) == []  # no table: off
    assert len(on(team.findings("impossible_travel", ip_locations=places))) == 1


def test_locations_longest_prefix_and_bad_files(tmp_path: Path, places: str) -> None:
    table = load_locations(places)
    assert len(table) == 5
    assert table.lookup("45.80.9.1").name == "Sydney"  # /24 inside the /16
    assert table.lookup("45.80.10.1").name == "Manila"
    assert table.lookup("2001:db8::1").name == "New York"
    assert table.lookup("192.0.2.1") is None and table.lookup("not an address") is None
    assert round(table.lookup("203.0.113.1").km_to(table.lookup("198.51.100.1"))) in range(25, 35)
    for text, message in [
        ("network,lat,lon\n", "lacks latitude, longitude"),
        ("network,latitude,longitude\n10.0.0.0/8,1,2\nnonsense,1,2\n", "line 3"),
        ("network,latitude,longitude\n10.0.0.0/8,91,2\n", "out of range"),
    ]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(AnomalyConfigError, match=message) as error:
            load_locations(bad)
        assert error.value.key == "anomaly.ip_locations"
    with pytest.raises(AnomalyConfigError, match="does not exist"):
        load_locations(tmp_path / "missing.csv")


def test_locations_files_as_they_come(tmp_path: Path) -> None:
    path = tmp_path / "geo.csv"
    # A byte-order mark, spaced headers, GeoLite2-style columns and accuracy, a row
    # without coordinates, and a second file's header (IPv4 and IPv6 files concatenated).
    path.write_text(
        "\ufeffnetwork, geoname_id ,latitude,longitude,accuracy_radius\n"
        "10.1.0.0/16,1,52.52,13.40,20\n"
        "10.2.0.0/16,2,,,\n"
        "network,geoname_id,latitude,longitude,accuracy_radius\n"
        "2001:db8::/32,3,40.71,-74.01,1000\n",
        encoding="utf-8",
    )
    table = load_locations(path)
    assert len(table) == 2
    berlin = table.lookup("::ffff:10.1.2.3")  # IPv4-mapped, as a dual-stack socket sees it
    assert berlin is not None and berlin.accuracy_km == 20
    assert table.lookup("10.2.0.1") is None
    new_york = table.lookup("2001:db8::7")
    assert new_york is not None
    # The least distance the two can be apart, given how accurate each place is.
    assert new_york.km_apart(berlin) == pytest.approx(berlin.km_to(new_york) - 1020)
    short = tmp_path / "short.csv"
    short.write_text("network,latitude,longitude\n10.0.0.0/8,52.5\n")
    with pytest.raises(AnomalyConfigError, match="line 2"):
        load_locations(short)


def test_median_without_equals_the_median_of_the_difference() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        values = sorted(rng.randint(0, 9) for _ in range(rng.randint(1, 25)))
        removed = sorted(rng.sample(values, rng.randint(0, len(values) - 1)))
        rest = list(values)
        for value in removed:
            rest.remove(value)
        assert median_without(values, removed) == statistics.median(rest)
    with pytest.raises(ValueError):
        median_without([1, 2], [1, 2])


def test_ip_locations_path_is_relative_to_its_config_file(tmp_path: Path, places: str) -> None:
    config = tmp_path / "conf" / "thresholds.toml"
    config.parent.mkdir()
    config.write_text('[anomaly]\nip_locations = "../locations.csv"\n')
    loaded = load_anomaly_config(None, str(config), environ={})
    assert Path(loaded.ip_locations).resolve() == Path(places).resolve()


# --- off-hours -------------------------------------------------------------------------


def test_off_hours_fires_at_night_from_a_new_address(team: Team) -> None:
    team.work(VICTIM, 15, hours=range(2, 4), rate=30, ip="45.80.9.9")
    found = on(team.findings("off_hours"))
    assert found and "outside own usual hours" in found[0].explanation
    assert "45.80.9.9" in found[0].explanation


def test_off_hours_quiet_on_travel(team: Team) -> None:
    # Monday and Tuesday from a hotel, the whole schedule 8 hours earlier.
    team.requests = [
        r for r in team.requests if not (r.subject == "a0" and at(14, 0) <= r.ts < at(16, 0))
    ]
    for day in (14, 15):
        team.work(VICTIM, day, hours=range(1, 9), ip="192.0.2.44")
    assert on(team.findings("off_hours")) == []


# --- after a lock, canaries -----------------------------------------------------------


def test_locked_attempts_fire(team: Team) -> None:
    for i in range(3):
        team.request(
            VICTIM,
            at(14, 12 + i / 10),
            "/api/records/rec-1-1-00001",
            ("rec-1-1-00001",),
            decision="deny",
            reason="locked:7",
        )
    found = on(team.findings("locked_attempt"))
    assert len(found) == 1
    assert found[0].dedup_key == f"locked_attempt:{VICTIM}:7"
    assert "3 requests refused by lock 7" in found[0].explanation
    check_explained(found[0])


def test_locked_attempts_quiet_after_the_lock_is_lifted(team: Team) -> None:
    # Other denials (policy) are not lock attempts.
    team.deny(VICTIM, at(14, 12), "/api/projects/proj-9/tasks")
    assert on(team.findings("locked_attempt")) == []


def test_canary_touch_fires(team: Team) -> None:
    team.read(VICTIM, at(14, 12.5), 9990)
    found = on(team.findings("canary_touch"))
    assert len(found) == 1 and found[0].severity == "critical"
    assert CANARY in found[0].explanation
    check_explained(found[0])


def test_canary_touch_quiet_on_the_neighbouring_record(team: Team) -> None:
    team.read(VICTIM, at(14, 12.5), 9989)
    assert on(team.findings("canary_touch")) == []


# --- plumbing --------------------------------------------------------------------------


def test_classify_matches_the_pipeline_reasons() -> None:
    assert classify("allow", "released", "read", "r1") == "read"
    assert classify("allow", "released", "annotate", "r1") == "annotate"
    assert classify("allow", "upstream_404", "read", "r1") == "other"
    assert classify("allow", "no_records", "read", None) == "other"
    assert classify("filtered", "record_policy_denied", "read", "r1") == "filtered"
    assert classify("deny", "locked:12", "read", None) == "locked"
    assert classify("deny", "stream_cut:locked", "read", None) == "locked"
    assert classify("deny", "unknown_route", None, None) == "unmatched"
    assert classify("deny", "upstream_timeout", "read", None) == "error"
    assert classify("deny", "policy_denied", "read", None) == "denied"


def test_thresholds_from_an_anomaly_table() -> None:
    config = parse_anomaly_table(
        {"volume_own_z": 8, "auto_lock_detectors": ["canary_touch"], "exfil_alpha": 0.5}
    )
    assert config.volume_own_z == 8.0 and config.auto_lock_detectors == ("canary_touch",)
    for bad in (
        {"nope": 1},
        {"volume_own_z": "high"},
        {"volume_own_z": -1},
        {"auto_lock_detectors": ["telepathy"]},
        {"auto_lock_min_severity": "dire"},
        {"exfil_alpha": 2.0},
    ):
        with pytest.raises(AnomalyConfigError):
            parse_anomaly_table(bad)


def test_rescan_finds_the_same_keys(team: Team) -> None:
    team.read(VICTIM, at(14, 12.5), 9990)
    for i in range(8):
        team.page(VICTIM, at(14, 10 + i / 8), 100 * i, 100)
    source = MemorySource(team.requests, canaries=[CANARY])
    first = detect(source, AnomalyConfig(), at(11, 0), at(DAYS, 0))
    later = detect(source, AnomalyConfig(), at(13, 0), at(DAYS, 0))
    assert {f.dedup_key for f in first} == {f.dedup_key for f in later}
