"""The simulator's subtle families and grants: each family is planted with its defining
property against the contractor's own history, every released record is on a granted
project, and the classic families' output is what it was before the simulator was split
into a package and the subtle families were added.

One small simulation with the subtle stage and one without (its baseline), cached for the
module.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import Counter, defaultdict
from datetime import UTC, datetime
from functools import cache

from gateway.anomaly.data import PolicyGrant, Request
from gateway.anomaly.simulate import (
    CLASSIC_FAMILIES,
    FAMILIES,
    SUBTLE_FAMILIES,
    Label,
    Simulation,
    simulate,
)

SIZES = {"contractors": 60, "days": 22, "warmup_days": 8}
SEED = 101

# Computed BEFORE gateway/anomaly/simulate.py became a package (commit 5288d74, the single
# module) with simulate(101, contractors=60, days=22, warmup_days=8), as the sha256 of the
# repr of:
#   requests: [(r.ts, r.request_id, r.path, r.record_ids) for r in simulation.requests]
#   labels:   [(l.family, l.contractor, l.start, l.end, sorted(l.details.items())) ...]
#   benign:   [(b.kind, b.contractor, b.project, b.start, b.end) ...]
CLASSIC_REQUESTS_SHA256 = "d01f152eee0e03de55e0751ab9b33b31a57176d3eb36ba1d1e05bdcbaf27e12b"
CLASSIC_LABELS_SHA256 = "85fce7d345bd2bf33345ba17ea6fb3302d8a3af531f0f3be8f579ba0c553da5e"
CLASSIC_BENIGN_SHA256 = "070ecedfe649801a855d1b8ace6a09d88539e602fb5c878bbb55a47c687dd43a"
CLASSIC_REQUESTS = 235398


@cache
def subtle() -> Simulation:
    return simulate(SEED, **SIZES)


@cache
def classic() -> Simulation:
    return simulate(SEED, subtle=False, **SIZES)


def sha(value: object) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()


def key(r: Request) -> str:
    return f"{r.issuer}:{r.subject}"


@cache
def by_contractor(which: str) -> dict[str, list[Request]]:
    simulation = subtle() if which == "subtle" else classic()
    out: dict[str, list[Request]] = defaultdict(list)
    for r in simulation.requests:
        out[key(r) if r.subject else f"ip:{r.client_ip}"].append(r)
    for requests in out.values():
        requests.sort(key=lambda r: (r.ts, r.request_id))
    return dict(out)


def requests_of(which: str, contractor: str) -> list[Request]:
    return by_contractor(which).get(contractor, [])


def is_read(r: Request) -> bool:
    return r.decision == "allow" and r.action == "read" and r.record_ids[0] is not None


def is_listing(r: Request) -> bool:
    return is_read(r) and r.path.endswith("/records")


def day_of(ts: float) -> int:
    return int(ts // 86400)


def daily_records(requests: list[Request]) -> Counter[int]:
    out: Counter[int] = Counter()
    for r in requests:
        if is_read(r):
            out[day_of(r.ts)] += len(r.record_ids)
    return out


def labels(family: str) -> list[Label]:
    found = [label for label in subtle().labels if label.family == family]
    assert found, f"no {family} planted"
    return found


def label_days(label: Label) -> set[int]:
    return {
        day_of(datetime.strptime(d, "%Y-%m-%d").replace(tzinfo=UTC).timestamp())
        for d in label.details["days"]
    }


def grants_at(contractor: str, vendor: str | None, ts: float) -> set[str]:
    return {
        g.project
        for g in subtle().grants
        if g.subject in (contractor, f"vendor:{vendor}") and g.ts <= ts
    }


# --- the classic families ----------------------------------------------------------------


def test_classic_output_is_what_it_was_before_the_split() -> None:
    simulation = classic()
    assert simulation.families == CLASSIC_FAMILIES
    assert len(simulation.requests) == CLASSIC_REQUESTS
    assert (
        sha([(r.ts, r.request_id, r.path, r.record_ids) for r in simulation.requests])
        == CLASSIC_REQUESTS_SHA256
    )
    assert (
        sha(
            [
                (x.family, x.contractor, x.start, x.end, sorted(x.details.items()))
                for x in simulation.labels
            ]
        )
        == CLASSIC_LABELS_SHA256
    )
    assert (
        sha([(b.kind, b.contractor, b.project, b.start, b.end) for b in simulation.benign])
        == CLASSIC_BENIGN_SHA256
    )


def test_the_subtle_stage_leaves_the_classic_attacks_alone() -> None:
    before, after = classic(), subtle()
    assert after.families == FAMILIES == CLASSIC_FAMILIES + SUBTLE_FAMILIES
    assert SUBTLE_FAMILIES == (
        "denial_trickle",
        "project_drift",
        "odd_days",
        "request_inflation",
        "vendor_creep",
    )
    assert [x.as_dict() for x in after.labels if x.family in CLASSIC_FAMILIES] == [
        x.as_dict() for x in before.labels
    ]
    # Every request of an attacked contractor (or address) is as it was.
    for label in before.labels:
        assert requests_of("subtle", label.contractor) == requests_of("classic", label.contractor)
    # The population's own benign cases are all still there, first.
    assert after.benign[: len(before.benign)] == before.benign
    assert after.contractor_days == before.contractor_days


def test_subtle_attacks_are_on_contractors_in_no_other_case() -> None:
    simulation = subtle()
    attacked = {x.contractor for x in classic().labels}
    hard = defaultdict(list)
    for case in classic().benign:
        if case.contractor is not None:
            hard[case.contractor].append(case)
    victims: list[str] = []
    for label in simulation.labels:
        if label.family not in SUBTLE_FAMILIES:
            continue
        assert simulation.start <= label.start <= label.end < simulation.end
        if label.family == "vendor_creep":
            # Members: not attacked, and in no hard case anywhere near the creep.
            members = label.details["contractors"]
            assert not set(members) & attacked
            for member in members:
                for case in hard[member]:
                    assert case.end < label.start - 86400 or case.start > label.end + 86400
            victims += members
        else:
            assert label.contractor not in attacked and label.contractor not in hard
            victims.append(label.contractor)
    assert len(victims) == len(set(victims))
    for family in SUBTLE_FAMILIES:
        assert labels(family)


# --- grants ------------------------------------------------------------------------------


def test_every_allowed_request_is_on_a_project_granted_at_that_time() -> None:
    for simulation in (subtle(), classic()):
        by_subject: dict[str, list[PolicyGrant]] = defaultdict(list)
        for grant in simulation.grants:
            by_subject[grant.subject].append(grant)
        checked = 0
        for r in simulation.requests:
            if r.decision != "allow" or r.subject is None or r.project is None:
                continue
            grants = by_subject[key(r)] + by_subject[f"vendor:{r.vendor}"]
            assert any(g.project == r.project and g.ts <= r.ts for g in grants), r
            checked += 1
        assert checked > 1000 * SIZES["contractors"]
    simulation = subtle()
    # Everyone's own project from before the log (or their first day); vendor-wide extras.
    assert {g.subject for g in simulation.grants if g.subject.startswith("vendor:")}
    starts = [g for g in simulation.grants if g.ts <= simulation.start - 86400]
    people = {g.subject for g in starts if not g.subject.startswith("vendor:")}
    assert len(people) > 0.7 * SIZES["contractors"]
    # Reassignments are granted at the time, not from the start.
    for case in simulation.benign:
        if case.kind == "reassignment":
            grant = [
                g
                for g in simulation.grants
                if g.subject == case.contractor and g.project == case.project
            ]
            assert grant and grant[0].ts > simulation.start - 86400


# --- the subtle families -----------------------------------------------------------------


def stretches(requests: list[Request]) -> list[tuple[float, float]]:
    """(first, last) of each stretch of allowed requests (a gap over 6 hours splits): a
    working day, wherever it falls in UTC days."""
    times = sorted(r.ts for r in requests if r.decision == "allow")
    out, first, previous = [], times[0], times[0]
    for ts in times[1:]:
        if ts - previous > 6 * 3600:
            out.append((first, previous))
            first = ts
        previous = ts
    out.append((first, previous))
    return out


def worked_on(requests: list[Request], days: set[int]) -> list[tuple[float, float]]:
    """The working days (stretches) of `requests` whose middle falls on one of `days`."""
    return [s for s in stretches(requests) if day_of((s[0] + s[1]) / 2) in days]


def inside(ts: float, spans: list[tuple[float, float]], slack: float = 0.0) -> bool:
    return any(first <= ts <= last + slack for first, last in spans)


def records(requests: list[Request], first: float, last: float) -> int:
    return sum(len(r.record_ids) for r in requests if is_read(r) and first <= r.ts <= last)


def test_denial_trickle() -> None:
    for label in labels("denial_trickle"):
        mine, before = (
            requests_of("subtle", label.contractor),
            requests_of("classic", label.contractor),
        )
        refused = [r for r in mine if r.reason == "policy_denied"]
        known = set(before)
        planted = [r for r in refused if r not in known]
        assert 6 <= len(planted) == label.details["denied"] <= 15
        spans = [s for s in stretches(before) if any(s[0] <= r.ts <= s[1] for r in planted)]
        assert 1 <= len(spans) <= 2 and all(inside(r.ts, spans) for r in planted)
        assert min(r.ts for r in planted) == label.start and max(r.ts for r in planted) == label.end
        vendor = mine[0].vendor
        for r in planted:
            assert r.project not in grants_at(label.contractor, vendor, r.ts)
        # At most 3 refusals in any hour, and more on the days than on any day before.
        per_hour = Counter(int(r.ts // 3600) for r in mine if r.decision == "deny")
        assert max(per_hour.values()) <= 3
        per_day = [sum(first <= r.ts <= last for r in refused) for first, last in stretches(before)]
        history = [n for n, s in zip(per_day, stretches(before), strict=True) if s not in spans]
        attack = [n for n, s in zip(per_day, stretches(before), strict=True) if s in spans]
        assert sum(attack) >= 6 and max(attack) > max(history, default=0)
        # Otherwise their work is as it was.
        assert [r for r in mine if r.decision == "allow"] == [
            r for r in before if r.decision == "allow"
        ]


def test_project_drift() -> None:
    for label in labels("project_drift"):
        mine, before = (
            requests_of("subtle", label.contractor),
            requests_of("classic", label.contractor),
        )
        drift, vendor = label.details["project"], mine[0].vendor
        history = [r for r in mine if r.ts < label.start and r.decision == "allow"]
        assert drift not in {r.project for r in history}
        # Reachable through the vendor's grant, from before the log; no grant of theirs
        # changed before it.
        assert any(
            g.subject == f"vendor:{vendor}" and g.project == drift and g.ts < subtle().start
            for g in subtle().grants
        )
        own = [g for g in subtle().grants if g.subject == label.contractor]
        assert len(own) == 1 and own[0].ts < subtle().start
        days = label_days(label)
        assert 3 <= len(days) <= 5
        spans = worked_on(before, days)
        assert len(spans) == len(days)
        for first, last in spans:
            there = sum(
                len(r.record_ids)
                for r in mine
                if is_read(r) and r.project == drift and first <= r.ts <= last
            )
            total = records(mine, first, last)
            assert 0.25 <= there / total <= 0.7
            assert total == records(before, first, last)  # moved, not added
        annotations = [r for r in mine if r.action == "annotate"]
        assert not [r for r in annotations if r.project == drift]
        assert len(annotations) == len([r for r in before if r.action == "annotate"])
        assert all(
            inside(r.ts, spans) for r in mine if r.project == drift and r.decision == "allow"
        )


def test_odd_days() -> None:
    for label in labels("odd_days"):
        mine = requests_of("subtle", label.contractor)
        days = label_days(label)
        odd = [r for r in mine if day_of(r.ts) in days]
        outside = [r for r in mine if day_of(r.ts) not in days]
        assert 1 <= len(days) <= 3 and len(odd) > 50
        weekday = lambda ts: datetime.fromtimestamp(ts, UTC).weekday()  # noqa: E731
        # Weekdays the contractor never works otherwise (UTC, as the detectors count).
        assert not {weekday(r.ts) for r in odd} & {weekday(r.ts) for r in outside}
        assert outside == requests_of("classic", label.contractor)
        # Normal volume (against their nearest working days), usual hours.
        per_day = daily_records(outside)
        for day, count in daily_records(odd).items():
            nearest = sorted(per_day, key=lambda d: abs(d - day))[:4]
            usual = statistics.median(per_day[d] for d in nearest)
            assert 0.4 * usual <= count <= 2.0 * usual, (count, usual)
        hours = Counter(datetime.fromtimestamp(r.ts, UTC).hour for r in outside if is_read(r))
        seen = {h for h, n in hours.items() if n >= 10}
        share = sum(datetime.fromtimestamp(r.ts, UTC).hour in seen for r in odd) / len(odd)
        assert share >= 0.9


def test_request_inflation() -> None:
    for label in labels("request_inflation"):
        mine, before = (
            requests_of("subtle", label.contractor),
            requests_of("classic", label.contractor),
        )
        days = label_days(label)
        assert 2 <= len(days) <= 5
        # The same requests, listings returning more.
        assert [(r.ts, r.request_id, r.path) for r in mine] == [
            (r.ts, r.request_id, r.path) for r in before
        ]
        history = [len(r.record_ids) for r in mine if is_listing(r) and r.ts < label.start]
        spans = worked_on(before, days)
        assert len(spans) == len(days)
        attack = [len(r.record_ids) for r in mine if is_listing(r) and inside(r.ts, spans)]
        assert len(attack) == label.details["listings"] >= 2 * len(days)
        ratio = statistics.mean(attack) / statistics.mean(history)
        assert 1.25 <= ratio <= 1.85
        assert abs(ratio - label.details["factor"]) < 0.1
        changed = [a for a, b in zip(mine, before, strict=True) if a != b]
        assert all(inside(r.ts, spans) and is_listing(r) for r in changed)


def test_vendor_creep() -> None:
    [label] = labels("vendor_creep")
    vendor = label.contractor.removeprefix("vendor:")
    assert label.contractor == f"vendor:{vendor}"
    members = label.details["contractors"]
    everyone = {key(r) for r in subtle().requests if r.vendor == vendor and r.subject}
    assert len(members) == len(set(members)) >= 2
    assert set(members) <= everyone
    assert label.details["share"] == round(len(members) / len(everyone), 2)
    days = label_days(label)
    assert 4 <= len(days) <= 7
    ratios = []
    for member in members:
        mine, before = requests_of("subtle", member), requests_of("classic", member)
        assert 1.2 <= label.details["factors"][member] <= 1.35
        known = set(before)
        added = [r for r in mine if r not in known]
        assert added and known <= set(mine)  # only added to
        worked = worked_on(before, days)
        # At their usual hours (inside their working days), on their own tasks ...
        assert all(inside(r.ts, worked, slack=300) for r in added)
        assert {(r.project, r.task) for r in added} <= {(r.project, r.task) for r in before}
        # ... and nobody above 1.4x.
        for first, last in worked:
            was = records(before, first, last)
            ratios.append(records(mine, first, last) / was)
            assert 1.0 <= ratios[-1] <= 1.4
    assert statistics.mean(ratios) >= 1.1


def test_benign_twins_are_there() -> None:
    kinds = Counter(case.kind for case in subtle().benign)
    assert kinds["reassignment"] > Counter(case.kind for case in classic().benign)["reassignment"]
    # (catch_up and schedule_change need free contractors with an absence, or a team:
    # not every seed has them at these sizes.)
    for kind in ("page_size_increase", "project_surge"):
        assert kinds[kind] >= 1, kind
