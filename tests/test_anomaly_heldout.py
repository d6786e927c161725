"""The held-out scenario generator: deterministic, well-labelled, and each attack family
has the property the specification gives it, measured on the rendered log against the
contractor's own history (not on the generator's internal plans)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field

import pytest

from gateway.anomaly.data import classify
from gateway.anomaly.heldout import HELDOUT_FAMILIES, generate, generate_world, plan_world
from gateway.anomaly.heldout.population import Person, World
from gateway.anomaly.simulate import Simulation

SMALL = {"contractors": 40, "days": 21, "warmup_days": 10}
BENIGN_KINDS = {
    "team_shift_change",
    "start_shift",
    "reassignment",
    "holiday",
    "vendor_holiday",
    "catch_up",
    "new_contractor",
    "tool_update",
    "deadline_surge",
}


@dataclass
class DayStats:
    reads: int = 0
    list_requests: int = 0
    list_rows: int = 0
    pages: list[int] = field(default_factory=list)  # records per listing request
    annotations: int = 0
    denials: list[float] = field(default_factory=list)
    projects: dict[str | None, int] = field(default_factory=dict)


Daily = dict[str, dict[int, DayStats]]


def _work_day(world: World, person: Person, ts: float) -> int:
    """A working day, not a calendar day: late shifts run past local midnight, so a
    person's days turn a couple of hours before their earliest start."""
    return world.local_day(person, ts - (min(person.start_hour) - 2.5) * 3600)


def scenario(seed: int, **size: int) -> tuple[Simulation, World, Daily]:
    """A generated scenario with each contractor's log folded by their local day."""
    simulation, world = generate_world(seed, **size)
    people = world.by_key()
    daily: Daily = defaultdict(lambda: defaultdict(DayStats))
    for r in simulation.requests:
        key = f"{r.issuer}:{r.subject}"
        stats = daily[key][_work_day(world, people[key], r.ts)]
        kind = classify(r.decision, r.reason, r.action, r.record_ids[0])
        if kind == "read":
            stats.reads += len(r.record_ids)
            stats.projects[r.project] = stats.projects.get(r.project, 0) + len(r.record_ids)
            if "?page=" in r.path:
                stats.list_requests += 1
                stats.list_rows += len(r.record_ids)
                stats.pages.append(len(r.record_ids))
        elif kind == "annotate":
            stats.annotations += 1
        elif kind == "denied":
            stats.denials.append(r.ts)
    return simulation, world, daily


@pytest.fixture(scope="module")
def generated() -> tuple[Simulation, World, Daily]:
    return scenario(11, **SMALL)


def _labels(simulation: Simulation, family: str) -> list:
    labels = [label for label in simulation.labels if label.family == family]
    assert labels, f"no {family} planted"
    return labels


def _history(days: dict[int, DayStats], before: int) -> dict[int, DayStats]:
    return {d: s for d, s in days.items() if d < before and s.reads}


def test_deterministic_per_seed() -> None:
    size = {"contractors": 24, "vendors": 4, "days": 14, "warmup_days": 7}
    first = generate(3, **size)
    again = generate(3, **size)
    other = generate(4, **size)
    assert first.requests == again.requests
    assert [label.as_dict() for label in first.labels] == [
        label.as_dict() for label in again.labels
    ]
    assert first.grants == again.grants
    assert first.requests != other.requests
    assert first.families == HELDOUT_FAMILIES


def test_output_shape(generated: tuple[Simulation, World, Daily]) -> None:
    simulation, world, daily = generated
    assert len({r.request_id for r in simulation.requests}) == len(simulation.requests)
    assert all(simulation.start <= r.ts < simulation.end for r in simulation.requests)
    times = [r.ts for r in simulation.requests]
    assert times == sorted(times)
    enrolled = sum(
        1
        for p in world.people
        for d in range(simulation.warmup_days, simulation.days)
        if d >= p.join_day
    )
    assert simulation.contractor_days == enrolled
    # Records received on a working day: roughly 100-300 for the typical contractor.
    per_day = [s.reads for days in daily.values() for s in days.values() if s.reads]
    assert 100 <= statistics.median(per_day) <= 300
    for r in simulation.requests:
        assert r.issuer == f"{r.vendor}-idp"
        if r.decision == "allow" and r.record_ids[0] is not None:
            assert all(rid and rid[-1].isdigit() for rid in r.record_ids)


def test_labels_in_scored_period(generated: tuple[Simulation, World, Daily]) -> None:
    simulation, world, _ = generated
    people = world.by_key()
    assert {label.family for label in simulation.labels} == set(HELDOUT_FAMILIES)
    attacked: list[str] = []
    for label in simulation.labels:
        assert simulation.scored_from <= label.start <= label.end < simulation.end
        if label.family == "vendor_creep":
            vendor = label.contractor.removeprefix("vendor:")
            assert label.contractor.startswith("vendor:")
            members = label.details["contractors"]
            assert len(members) >= 2
            for key in members:
                assert people[key].vendor.name == vendor
            attacked.extend(members)
        else:
            assert label.contractor in people
            attacked.append(label.contractor)
    assert len(attacked) == len(set(attacked)), "a contractor attacked twice"


def test_denial_trickle(generated: tuple[Simulation, World, Daily]) -> None:
    simulation, world, _ = generated
    people = world.by_key()
    for label in _labels(simulation, "denial_trickle"):
        person = people[label.contractor]
        refused = [
            r
            for r in simulation.requests
            if f"{r.issuer}:{r.subject}" == label.contractor
            and r.decision == "deny"
            and label.start <= r.ts <= label.end
            and _work_day(world, person, r.ts) in label.details["days"]
        ]
        assert 6 <= len(refused) <= 15
        assert len(refused) == label.details["refusals"]
        per_hour: dict[int, int] = defaultdict(int)
        for r in refused:
            per_hour[int(r.ts // 3600)] += 1
            assert r.reason == "policy_denied" and r.upstream_status is None
            assert not _granted(simulation, label.contractor, person.vendor.name, r.project, r.ts)
        assert max(per_hour.values()) <= 3
        # The refusals fall within the contractor's usual hours of those days.
        local = {int(((r.ts - simulation.start) / 3600 + person.tz) % 24) for r in refused}
        usual = {
            int(((r.ts - simulation.start) / 3600 + person.tz) % 24)
            for r in simulation.requests
            if f"{r.issuer}:{r.subject}" == label.contractor and r.ts < label.start
        }
        assert local <= usual | {h + 1 for h in usual} | {h - 1 for h in usual}


def test_project_drift(generated: tuple[Simulation, World, Daily]) -> None:
    simulation, world, daily = generated
    people = world.by_key()
    for label in _labels(simulation, "project_drift"):
        person, project = people[label.contractor], label.details["project"]
        days = daily[label.contractor]
        history = _history(days, label.details["days"][0])
        usual = statistics.median(s.reads for s in history.values())
        for day in label.details["days"]:
            today = days[day]
            assert 0.75 * usual <= today.reads <= 1.25 * usual
            assert today.projects.get(project, 0) >= 0.2 * today.reads
            assert today.annotations <= today.reads
        assert all(project not in s.projects for s in history.values())
        assert any(
            g.subject == f"vendor:{person.vendor.name}"
            and g.project == project
            and g.ts < simulation.start
            for g in simulation.grants
        )
        assert not any(
            g.subject == label.contractor and g.project == project for g in simulation.grants
        )


def test_odd_days(generated: tuple[Simulation, World, Daily]) -> None:
    simulation, _, daily = generated
    for label in _labels(simulation, "odd_days"):
        days = daily[label.contractor]
        odd = label.details["days"]
        history = _history(days, odd[0])
        seen = {d % 7 for d in history}
        usual = statistics.median(s.reads for s in history.values())
        for day in odd:
            assert day % 7 not in seen
            assert 0.6 * usual <= days[day].reads <= 1.5 * usual


def test_request_inflation(generated: tuple[Simulation, World, Daily]) -> None:
    simulation, _, daily = generated
    for label in _labels(simulation, "request_inflation"):
        days = daily[label.contractor]
        window = label.details["days"]
        history = {d: s for d, s in _history(days, window[0]).items() if s.list_requests}
        # Medians: a task's last page is short, whatever the page size.
        before = statistics.median(n for s in history.values() for n in s.pages)
        during = statistics.median(n for d in window for n in days[d].pages)
        assert during >= 1.25 * before
        assert label.details["returned"] == during
        requests = statistics.median(s.list_requests for s in history.values())
        per_day = statistics.mean(days[d].list_requests for d in window)
        assert 0.6 * requests <= per_day <= 1.5 * requests


def test_vendor_creep(generated: tuple[Simulation, World, Daily]) -> None:
    simulation, world, daily = generated
    for label in _labels(simulation, "vendor_creep"):
        vendor = label.contractor.removeprefix("vendor:")
        staff = [p for p in world.people if p.vendor.name == vendor and p.join_day == 0]
        assert 0.4 <= len(label.details["contractors"]) / len(staff) <= 0.75
        for key in label.details["contractors"]:
            attacked = label.details["member_days"][key]
            assert 3 <= len(attacked) <= 8
            assert label.details["days"][0] <= attacked[0] <= attacked[-1]
            assert attacked[-1] <= label.details["days"][-1]
            days = daily[key]
            usual = statistics.median(s.reads for s in _history(days, attacked[0]).values())
            mine = [days[d].reads for d in attacked]
            assert 1.15 <= statistics.mean(mine) / usual <= 1.45
            assert max(mine) <= 1.6 * usual


def _granted(simulation: Simulation, key: str, vendor: str, project: str | None, ts: float) -> bool:
    return any(
        g.project == project and g.subject in (key, f"vendor:{vendor}") and g.ts <= ts
        for g in simulation.grants
    )


def test_allowed_only_where_granted(generated: tuple[Simulation, World, Daily]) -> None:
    simulation, _, _ = generated
    since: dict[tuple[str, str], float] = {}
    for g in simulation.grants:
        since[(g.subject, g.project)] = min(since.get((g.subject, g.project), g.ts), g.ts)
    for r in simulation.requests:
        if r.decision != "allow":
            continue
        key = f"{r.issuer}:{r.subject}"
        ok = [since.get((s, r.project or "")) for s in (key, f"vendor:{r.vendor}")]
        assert any(t is not None and t <= r.ts for t in ok), (key, r.project, r.ts)


def test_benign_refusals_are_rare(generated: tuple[Simulation, World, Daily]) -> None:
    simulation, _, daily = generated
    trickled = {label.contractor for label in simulation.labels if label.family == "denial_trickle"}
    days = [s for key, per in daily.items() if key not in trickled for s in per.values()]
    refused = [s for s in days if s.denials]
    assert 0.04 <= len(refused) / len(days) <= 0.2
    # At most two by chance, plus up to six stale links the day after a move.
    assert max(len(s.denials) for s in refused) <= 8


def test_benign_cases_planted() -> None:
    # Planting happens before any request is drawn, so a default-size world is cheap.
    world = plan_world(5)
    kinds = {case.kind for case in world.benign}
    assert kinds == BENIGN_KINDS
    for kind in ("holiday", "reassignment", "new_contractor", "start_shift"):
        assert sum(case.kind == kind for case in world.benign) >= 2
    assert all(case.start <= case.end for case in world.benign)


def test_small_seed_plants_every_benign_kind(generated: tuple[Simulation, World, Daily]) -> None:
    simulation, _, _ = generated
    assert {case.kind for case in simulation.benign} == BENIGN_KINDS
    moves = [case for case in simulation.benign if case.kind in ("reassignment", "new_contractor")]
    for case in moves:
        # Announced by a grant shortly before the first access to the project.
        grant = next(
            g
            for g in simulation.grants
            if g.subject == case.contractor and g.project == case.project
        )
        first = min(
            r.ts
            for r in simulation.requests
            if f"{r.issuer}:{r.subject}" == case.contractor
            and r.project == case.project
            and r.decision == "allow"
        )
        assert 0 < first - grant.ts <= 6 * 3600
