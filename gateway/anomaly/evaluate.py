"""Measure the detectors on simulated, labelled logs: recall, precision, false alerts, TTD.

For each seed: simulate, run the same `detect` the database scan runs (over the
in-memory aggregates), then match alerts to the labelled attacks.

- An alert is *true* when it is on an attacked contractor (or address) and its window
  overlaps the attack's window (extended by `GRACE` after its end); otherwise *false*.
- An attack is *detected* when a true alert for it was raised (`detected_at`) at or after
  the attack began; time to detect = the first such `detected_at` - attack start. Hourly
  detectors count as raised at the end of the hour, daily ones at the end of the day
  (a scan at that moment would raise them); canary and lock detectors at the first row.
- The scan covers the period after the warm-up (the first `warmup_days` are history);
  false alerts per 100 contractor-days divide by the contractor-days enrolled in it.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.anomaly.config import DETECTORS, AnomalyConfig
from gateway.anomaly.detectors import Finding, detect
from gateway.anomaly.memory import MemorySource
from gateway.anomaly.simulate import Simulation, simulate

# The scenario generators: the project's own simulator, on which the thresholds are tuned,
# and the held-out one (gateway/anomaly/heldout/), written from a behaviour specification
# without the detectors' code, on which they are judged.
GENERATORS = ("simulator", "heldout")


def generator(name: str) -> Callable[..., Simulation]:
    if name == "simulator":
        return simulate
    if name == "heldout":
        from gateway.anomaly.heldout import generate

        return generate
    raise ValueError(f"unknown scenario generator {name!r}; use one of {', '.join(GENERATORS)}")


GRACE = 24 * 3600
# Seeds the thresholds were tuned on; evaluation figures come from other seeds.
TUNING_SEEDS = tuple(range(1, 11))
HELD_OUT_SEEDS = (101, 102, 103)


@dataclass
class SeedResult:
    seed: int
    contractor_days: int
    requests: int
    rows: int
    attacks: dict[str, int] = field(default_factory=Counter)
    detected: dict[str, int] = field(default_factory=Counter)
    ttd: dict[str, list[float]] = field(default_factory=dict)
    caught_by: dict[str, Counter] = field(default_factory=dict)
    alerts: Counter = field(default_factory=Counter)
    true_alerts: Counter = field(default_factory=Counter)
    false_alerts: list[dict[str, Any]] = field(default_factory=list)
    missed: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    families: tuple[str, ...] = ()


def score(simulation: Simulation, findings: list[Finding]) -> SeedResult:
    result = SeedResult(
        simulation.seed,
        simulation.contractor_days,
        len(simulation.requests),
        sum(len(r.record_ids) for r in simulation.requests),
        families=tuple(simulation.families),
    )
    by_contractor: dict[str, list[int]] = {}
    for index, label in enumerate(simulation.labels):
        by_contractor.setdefault(label.contractor, []).append(index)
        # A vendor-wide attack is also caught by an alert on one of its contractors.
        for member in label.details.get("contractors", ()):
            by_contractor.setdefault(member, []).append(index)
        result.attacks[label.family] += 1
    first_detection: dict[int, tuple[float, str]] = {}
    for finding in findings:
        result.alerts[finding.detector] += 1
        matched = [
            i
            for i in by_contractor.get(finding.who.key, [])
            if finding.window_start <= simulation.labels[i].end + GRACE
            and finding.window_end >= simulation.labels[i].start
        ]
        if not matched:
            benign = [
                case.kind
                for case in simulation.benign
                if (case.contractor in (None, finding.who.key))
                and case.start <= finding.window_end
                and case.end >= finding.window_start
                and (case.contractor is not None or case.project == finding.project)
            ]
            result.false_alerts.append({**finding.as_dict(), "benign_cases": benign})
            continue
        result.true_alerts[finding.detector] += 1
        for i in matched:
            label = simulation.labels[i]
            if finding.detected_at < label.start:
                continue
            previous = first_detection.get(i)
            if previous is None or finding.detected_at < previous[0]:
                first_detection[i] = (finding.detected_at, finding.detector)
            result.caught_by.setdefault(label.family, Counter())[finding.detector] += 1
    for index, label in enumerate(simulation.labels):
        hit = first_detection.get(index)
        if hit is None:
            result.missed.append(label.as_dict())
            continue
        result.detected[label.family] += 1
        result.ttd.setdefault(label.family, []).append(hit[0] - label.start)
    return result


def run_seed(
    seed: int, config: AnomalyConfig, generator_name: str = "simulator", **sizes: int
) -> SeedResult:
    started = time.monotonic()
    simulation = generator(generator_name)(seed, **sizes)
    source = MemorySource(simulation.requests, simulation.canaries, simulation.grants)
    findings = detect(source, config, simulation.scored_from, simulation.end)
    result = score(simulation, findings)
    result.seconds = time.monotonic() - started
    return result


@dataclass
class Report:
    seeds: list[int]
    sizes: dict[str, int]
    results: list[SeedResult]
    generator: str = "simulator"

    def families(self) -> list[dict[str, Any]]:
        rows = []
        names = list(dict.fromkeys(f for r in self.results for f in r.families))
        for family in names:
            attacks = sum(r.attacks[family] for r in self.results)
            detected = sum(r.detected[family] for r in self.results)
            ttd = [t for r in self.results for t in r.ttd.get(family, [])]
            caught: Counter = Counter()
            for r in self.results:
                caught.update(r.caught_by.get(family, Counter()))
            rows.append(
                {
                    "family": family,
                    "attacks": attacks,
                    "detected": detected,
                    "recall": detected / attacks if attacks else None,
                    "ttd_median_s": statistics.median(ttd) if ttd else None,
                    "ttd_max_s": max(ttd) if ttd else None,
                    "caught_by": dict(caught.most_common()),
                }
            )
        return rows

    def detectors(self) -> list[dict[str, Any]]:
        rows = []
        for detector in DETECTORS:
            alerts = sum(r.alerts[detector] for r in self.results)
            true = sum(r.true_alerts[detector] for r in self.results)
            rows.append(
                {
                    "detector": detector,
                    "alerts": alerts,
                    "true": true,
                    "false": alerts - true,
                    "precision": true / alerts if alerts else None,
                }
            )
        return rows

    def overall(self) -> dict[str, Any]:
        attacks = sum(sum(r.attacks.values()) for r in self.results)
        detected = sum(sum(r.detected.values()) for r in self.results)
        alerts = sum(sum(r.alerts.values()) for r in self.results)
        true = sum(sum(r.true_alerts.values()) for r in self.results)
        days = sum(r.contractor_days for r in self.results)
        ttd = [t for r in self.results for ts in r.ttd.values() for t in ts]
        recalls = [f["recall"] for f in self.families() if f["recall"] is not None]
        return {
            "attacks": attacks,
            "detected": detected,
            "recall": detected / attacks if attacks else None,
            "min_family_recall": min(recalls) if recalls else None,
            "alerts": alerts,
            "true_alerts": true,
            "false_alerts": alerts - true,
            "precision": true / alerts if alerts else None,
            "contractor_days": days,
            "false_per_100_contractor_days": 100 * (alerts - true) / days if days else None,
            "ttd_median_s": statistics.median(ttd) if ttd else None,
        }

    def passed(self) -> bool:
        overall = self.overall()
        return (overall["min_family_recall"] or 0) >= 0.9 and (
            overall["false_per_100_contractor_days"] or 0
        ) <= 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "seeds": self.seeds,
            "sizes": self.sizes,
            "families": self.families(),
            "detectors": self.detectors(),
            "overall": self.overall(),
            "goal_met": self.passed(),
            "per_seed": [
                {
                    "seed": r.seed,
                    "contractor_days": r.contractor_days,
                    "requests": r.requests,
                    "rows": r.rows,
                    "alerts": sum(r.alerts.values()),
                    "false_alerts": len(r.false_alerts),
                    "missed": r.missed,
                    "seconds": round(r.seconds, 1),
                }
                for r in self.results
            ],
            "false_alerts": [fa for r in self.results for fa in r.false_alerts],
        }


def evaluate(
    seeds: list[int],
    config: AnomalyConfig | None = None,
    *,
    generator_name: str = "simulator",
    contractors: int | None = None,
    vendors: int | None = None,
    days: int | None = None,
    on_seed: Any = None,
) -> Report:
    """Each seed of one generator, scored; sizes left out take the generator's defaults."""
    config = config or AnomalyConfig()
    asked = {"contractors": contractors, "vendors": vendors, "days": days}
    sizes = {name: value for name, value in asked.items() if value is not None}
    defaults = inspect.signature(generator(generator_name)).parameters
    shown = {name: sizes.get(name, defaults[name].default) for name in asked}
    results = []
    for seed in seeds:
        result = run_seed(seed, config, generator_name, **sizes)
        results.append(result)
        if on_seed is not None:
            on_seed(result)
    return Report(list(seeds), shown, results, generator_name)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(report: Report) -> str:
    """The report as Markdown tables (what bench/RESULTS.md records)."""
    overall = report.overall()
    lines = [
        "| scenario family | attacks | detected | recall | time to detect (median / max) "
        "| caught by (alerts) |",
        "|---|---:|---:|---:|---|---|",
    ]
    for row in report.families():
        caught = ", ".join(f"{k} {v}" for k, v in row["caught_by"].items()) or "-"
        lines.append(
            f"| {row['family']} | {row['attacks']} | {row['detected']} | {ratio(row['recall'])} "
            f"| {duration(row['ttd_median_s'])} / {duration(row['ttd_max_s'])} | {caught} |"
        )
    lines.append(
        f"| **overall** | {overall['attacks']} | {overall['detected']} | "
        f"**{ratio(overall['recall'])}** | {duration(overall['ttd_median_s'])} | - |"
    )
    lines += [
        "",
        "| detector | alerts | true | false | precision |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in report.detectors():
        lines.append(
            f"| {row['detector']} | {row['alerts']} | {row['true']} | {row['false']} "
            f"| {ratio(row['precision'])} |"
        )
    lines.append(
        f"| **all** | {overall['alerts']} | {overall['true_alerts']} | {overall['false_alerts']} "
        f"| **{ratio(overall['precision'])}** |"
    )
    per100 = overall["false_per_100_contractor_days"]
    fell_on = Counter(
        "+".join(sorted(set(alert["benign_cases"]))) or "no scripted benign case"
        for r in report.results
        for alert in r.false_alerts
    )
    lines += [
        "",
        f"- false alerts per 100 contractor-days: **{per100:.2f}** "
        f"({overall['false_alerts']} over {overall['contractor_days']:,} contractor-days)",
        "- false alerts by the benign case they fell on: "
        + (", ".join(f"{kind} {n}" for kind, n in fell_on.most_common()) or "none"),
        f"- lowest family recall: **{ratio(overall['min_family_recall'])}**; goal (recall >= 0.9 "
        f"on every family, <= 1 false alert per 100 contractor-days): "
        f"**{'met' if report.passed() else 'NOT met'}**",
    ]
    return "\n".join(lines)


def summary_line(report: Report) -> str:
    """One stable line of figures (tests compare it with bench/RESULTS.md)."""
    overall = report.overall()
    families = " ".join(
        f"{row['family']}={row['detected']}/{row['attacks']}" for row in report.families()
    )
    return (
        f"generator={report.generator} "
        f"seeds={','.join(map(str, report.seeds))} contractors={report.sizes['contractors']} "
        f"vendors={report.sizes['vendors']} days={report.sizes['days']} "
        f"alerts={overall['alerts']} false={overall['false_alerts']} "
        f"contractor_days={overall['contractor_days']} {families}"
    )
