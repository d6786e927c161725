"""Incremental watch rounds give the full rescan's findings, round by round.

On the evaluation simulator's seeds (in memory, hour by hour over more than a day, across
midnight), and on PostgreSQL through `scan` with the SQL rollup: every round of an
`IncrementalDetector` returns exactly what `detect` returns over the same window, while
scoring again only the contractors whose inputs changed (and everyone on a new day).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.anomaly.config import AnomalyConfig
from gateway.anomaly.detectors import Finding, detect
from gateway.anomaly.incremental import IncrementalDetector, window_start
from gateway.anomaly.memory import MemorySource
from gateway.anomaly.rollup import SqlSource
from gateway.anomaly.scan import scan
from gateway.anomaly.simulate import simulate, write_requests
from gateway.anomaly.store import list_alerts
from gateway.db.migrate import upgrade
from gateway.db.session import make_engine
from tests.test_audit_partitions import postgres_url  # noqa: F401 (a fixture)

CONFIG = AnomalyConfig()
SIZES = {"contractors": 40, "vendors": 4, "days": 21, "warmup_days": 7}


def as_dicts(findings: list[Finding]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(finding) for finding in findings]


def rounds(first_hour: int, count: int) -> Iterator[tuple[float, float]]:
    for k in range(count):
        end = (first_hour + k) * 3600.0
        yield window_start(end, CONFIG.scan_window_hours), end


@pytest.mark.parametrize(("seed", "count"), [(101, 26), (102, 6), (103, 6)])
def test_incremental_rounds_equal_full_rounds_in_memory(seed: int, count: int) -> None:
    simulation = simulate(seed, **SIZES)
    source = MemorySource(simulation.requests, simulation.canaries)
    detector = IncrementalDetector(source, CONFIG)
    # From mid-afternoon of a scored day, hour by hour, past midnight (seed 101).
    first_hour = int(simulation.scored_from // 86400) * 24 + 24 * 3 + 15
    partial, new_day, alerting = 0, 0, 0
    for number, (since, end) in enumerate(rounds(first_hour, count)):
        incremental = detector.round(since, end)
        full = detect(source, CONFIG, since, end)
        assert as_dicts(incremental) == as_dicts(full), f"round {number} ({end})"
        figures = detector.figures
        alerting += bool(full)
        if number and figures.rescored_contractors < figures.contractors:
            partial += 1
        if number and figures.rescored_contractors == figures.contractors:
            new_day += 1
    assert partial > 0  # some rounds left contractors alone ...
    assert alerting > 0  # ... and there was something to find
    if count > 9:  # seed 101 runs past midnight
        assert new_day > 0  # ... and the new day scored everyone


def test_the_window_moves_once_a_day() -> None:
    day = 20_000 * 86400
    assert window_start(day + 5 * 3600, 48) == day - 2 * 86400
    assert window_start(day + 23 * 3600, 48) == day - 2 * 86400
    assert window_start(day + 24 * 3600, 48) == day - 86400


def test_incremental_watch_rounds_on_postgresql(postgres_url: str) -> None:  # noqa: F811
    simulation = simulate(101, **SIZES)
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    write_requests(
        engine,
        simulation.requests,
        canaries=simulation.canaries,
        chain="incremental-test",
        canaries_since=datetime.fromtimestamp(simulation.start, UTC),
    )
    source = SqlSource(engine)
    detector = IncrementalDetector(source, CONFIG, late_hours=CONFIG.rollup_late_hours)
    first_hour = int(simulation.scored_from // 86400) * 24 + 24 * 3 + 20
    seen = []
    for number, (since, end) in enumerate(rounds(first_hour, 8)):
        until = datetime.fromtimestamp(end, UTC)
        result = scan(engine, CONFIG, until=until, incremental=detector)
        assert result.since == datetime.fromtimestamp(since, UTC)
        full = detect(source, CONFIG, since, end)
        assert as_dicts(result.findings) == as_dicts(full), f"round {number}"
        seen.append(result.detection)
    assert seen[0]["full"] and not seen[1]["full"]
    assert any(d["rescored_contractors"] < d["contractors"] for d in seen[1:])
    # Every finding of the last round is stored as an alert.
    stored = {alert["dedup_key"] for alert in list_alerts(engine, limit=1000)}
    assert full and stored >= {finding.dedup_key for finding in full}
    engine.dispose()
