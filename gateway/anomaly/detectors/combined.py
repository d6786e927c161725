"""Weak signals combined: per contractor and day, and per vendor across its contractors.

Contractor score (`combined`), for each day d of the scored window:

    points(signal) = weight x min(surprise, combined_signal_cap)
    day(d)         = sum of points of the day's signals with points >= combined_min_points
                     + the severity points of other detectors' findings that day
    score(d)       = day(d) + combined_decay x score(d - 1)

An alert is raised when score(d) >= combined_threshold and nothing else alerted on the
contractor that day (its own alert stands). So a departure that no single detector
alerts on, a refusal trickle, a first project without a grant, a never-worked weekday,
larger pages, adds up with its neighbours and with the previous days'. Each alert lists
every contributing signal with its numbers and day.

Vendor score (`vendor_rise`): on each day, the mean log change of the vendor's contractors'
reads against their own history, less the same mean of the other vendors' contractors on
the same projects (a deadline lifts everyone on a project), divided by its standard error:
z(d). A one-sided CUSUM, S(d) = max(0, S(d - 1) + z(d) - vendor_cusum_slack), alerts
at vendor_cusum_threshold: small rises of many contractors at once, that no one
contractor's history would notice.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from gateway.anomaly.data import Day, Series, Who
from gateway.anomaly.detectors.baselines import history
from gateway.anomaly.detectors.common import (
    MAD_SCALE,
    Context,
    Finding,
    Peers,
    day_text,
    median_mad,
    num,
)
from gateway.anomaly.detectors.signals import Signal, contractor_signals

# The key of a vendor's own findings (never a contractor's: those are <issuer>:<sub>).
VENDOR_PREFIX = "vendor:"
SEVERITY_POINTS = {"low": 3.0, "medium": 6.0, "high": 10.0, "critical": 12.0}
MAX_LISTED_DAYS = 7


def combined(series: Series, peers: Peers, ctx: Context, others: list[Finding]) -> list[Finding]:
    """The combined alerts of one contractor; `others` are the other detectors' findings
    on them, which feed the score."""
    if series.who.subject is None:
        return []
    c = ctx.config
    facts = series.days()
    first_day = ctx.since_hour // 24
    last_day = (ctx.end_hour - 1) // 24
    # Scored days start early enough for the carried score to settle (decay^7 < 1 %).
    start_day = first_day - 7
    by_day: dict[int, list[Finding]] = {}
    for finding in others:
        last = max(finding.window_start, finding.window_end - 1)
        for d in range(int(finding.window_start // 86400), int(last // 86400) + 1):
            by_day.setdefault(d, []).append(finding)
    carried = 0.0
    trail: list[tuple[int, float, list[Signal]]] = []
    found: list[Finding] = []
    episode: int | None = None
    for day in range(start_day, last_day + 1):
        signals = contractor_signals(series, facts, day, peers, ctx) if day in facts else []
        for finding in by_day.get(day, []):
            signals.append(_from_finding(finding, day))
        signals = [s for s in signals if s.points(c.combined_signal_cap) >= c.combined_min_points]
        today = sum(s.points(c.combined_signal_cap) for s in signals)
        score = today + c.combined_decay * carried
        carried = score
        trail = [t for t in trail if t[0] >= day - MAX_LISTED_DAYS + 1]
        if signals:
            trail.append((day, today, signals))
        if score < c.combined_threshold or not today:
            episode = None
            continue
        # The episode's first day keys its alert, also when it began before the window:
        # the next round's window starts later and must find the same key.
        if episode is None:
            episode = day
        if day < first_day or by_day.get(day):
            continue
        found.append(_finding(series.who, day, score, trail, episode, ctx))
    return found


def _from_finding(finding: Finding, day: int) -> Signal:
    return Signal(
        f"detector:{finding.detector}",
        day,
        SEVERITY_POINTS.get(finding.severity, 3.0),
        1.0,
        finding.explanation,
        {"dedup_key": finding.dedup_key},
        finding.evidence_kinds,
    )


def _finding(
    who: Who,
    day: int,
    score: float,
    trail: list[tuple[int, float, list[Signal]]],
    episode: int,
    ctx: Context,
) -> Finding:
    c = ctx.config
    decay = c.combined_decay
    contributing = [
        (d, today * decay ** (day - d), signals) for d, today, signals in trail if d <= day
    ]
    listed = [s for _, _, signals in contributing for s in signals]
    listed.sort(key=lambda s: (-s.points(c.combined_signal_cap), s.day, s.name))
    first = min(d for d, _, _ in contributing)
    parts = "; ".join(
        f"{s.name} on {day_text(s.day)} ({s.points(c.combined_signal_cap):.1f}): {s.text}"
        for s in listed[:6]
    )
    kinds = tuple(sorted({kind for s in listed for kind in s.kinds}))
    severity = "high" if score >= 2 * c.combined_threshold else "medium"
    end = min((day + 1) * 86400.0, ctx.end_hour * 3600.0)
    return Finding(
        "combined",
        severity,
        who,
        first * 86400.0,
        end,
        end,
        score,
        f"combined score {score:.1f} (alerts at {num(c.combined_threshold)}) from "
        f"{len(listed)} signal(s) no detector alerted on alone: {parts}",
        f"combined:{who.key}:{day_text(episode)}",
        None,
        {
            "signals": [s.as_dict(c.combined_signal_cap) for s in listed],
            "day_points": {day_text(d): round(points, 2) for d, points, _ in contributing},
        },
        kinds or ("read",),
    )


# --- vendors -----------------------------------------------------------------------------


def vendor_rise(vendor: str | None, peers: Peers, ctx: Context) -> list[Finding]:
    """Small rises of many of one vendor's contractors at once (see the module text)."""
    if vendor is None:
        return []
    c = ctx.config
    across = _across_levels(ctx)
    first_day = ctx.since_hour // 24
    last_day = (ctx.end_hour - 1) // 24
    members = {key for key, s in peers.series.items() if s.who.subject is not None}
    facts = {key: peers.series[key].days() for key in members}
    found: list[Finding] = []
    cusum = 0.0
    episode: int | None = None
    history_days: list[dict[str, Any]] = []
    staffed: list[int] = []  # the vendor's contractors with history, day by day
    for day in range(first_day - 7, last_day + 1):
        own = _own_changes(facts, day, c.history_days, c.min_history_days)
        projects = {project for _, project, _ in own}
        outside = [(p, change) for key, p, change in across.get(day, []) if key not in members]
        others = [change for p, change in outside if p in projects]
        if len(others) < c.vendor_min_contractors:
            # Nobody else works on its projects: every other vendor is the baseline.
            others = [change for _, change in outside]
        staffed.append(len(own))
        usual = statistics.median(staffed[-14:])
        if (
            len(own) < c.vendor_min_contractors
            or len(others) < c.vendor_min_contractors
            or len(own) < usual / 2
        ):
            # A day the vendor mostly rests (a weekend, a holiday) is not scored; the
            # running sum carries over it.
            continue
        mine = [change for _, _, change in own]
        z = _difference_z(mine, others)
        cusum = max(0.0, cusum + z - c.vendor_cusum_slack)
        history_days.append(
            {
                "day": day_text(day),
                "z": round(z, 2),
                "cusum": round(cusum, 2),
                "contractors": len(mine),
                "mean_change": round(statistics.fmean(mine), 3),
                "others_mean_change": round(statistics.fmean(others), 3),
            }
        )
        history_days = history_days[-MAX_LISTED_DAYS:]
        if cusum < c.vendor_cusum_threshold:
            episode = None
            continue
        if episode is None:
            episode = day
        if day < first_day:
            continue
        rising = sorted(own, key=lambda item: -item[2])
        up = [item for item in rising if item[2] > 0]
        end = min((day + 1) * 86400.0, ctx.end_hour * 3600.0)
        who = Who(f"{VENDOR_PREFIX}{vendor}", None, None, vendor)
        found.append(
            Finding(
                "vendor_rise",
                "medium",
                who,
                (day - len(history_days) + 1) * 86400.0,
                end,
                end,
                cusum,
                f"vendor {vendor}: {len(up)} of {len(own)} contractors read more than their "
                f"own usual on {day_text(day)} (by {statistics.fmean(mine):+.2f} of their own "
                f"day-to-day spread on average; other vendors on the same projects "
                f"{statistics.fmean(others):+.2f}; z {z:.1f}); the rise has lasted: CUSUM "
                f"{cusum:.1f} (alerts at {num(c.vendor_cusum_threshold)})",
                f"vendor_rise:{vendor}:{day_text(episode)}",
                None,
                {
                    "days": list(history_days),
                    "contractors": [
                        {"contractor": key, "project": project, "spreads": round(ch, 2)}
                        for key, project, ch in up[:20]
                    ],
                    # A vendor has no rows of its own: the evidence names its contractors.
                    "rows": [],
                    "request_ids": [],
                },
            )
        )
    return found


def _own_changes(
    facts: dict[str, dict[int, Day]], day: int, history_days: int, min_days: int
) -> list[tuple[str, str | None, float]]:
    """(contractor, main project, reads against their own usual) of the day."""
    out = []
    for key, days in facts.items():
        today = days.get(day)
        if today is None or not today.active:
            continue
        past = history(days, day, history_days)
        if past.n < min_days:
            continue
        out.append(
            (key, today.project, _standard_change(today.reads, [days[d].reads for d in past.days]))
        )
    return out


def _standard_change(reads: int, past: list[int]) -> float:
    """Today's log reads against the own median, in units of the own day-to-day spread
    (robust, floored): a steady contractor's small rise counts as much as a volatile
    one's large rise."""
    logs = [math.log(r + 10) for r in past]
    middle, spread = median_mad(logs)
    return (math.log(reads + 10) - middle) / max(MAD_SCALE * spread, 0.1)


def _across_levels(ctx: Context) -> dict[int, list[tuple[str, str | None, float]]]:
    """The same changes for every contractor of every vendor, from the daily reads."""
    cached = ctx.cache.get("across_levels")
    if cached is not None:
        return cached
    c = ctx.config
    start = ctx.since_hour - 24 * (c.history_days + 8)
    per_key: dict[str, dict[int, tuple[str | None, int]]] = {}
    for (day, project), entries in ctx.cache["project_days"].items():
        if day * 24 < start:
            continue
        for key, reads in entries:
            per_key.setdefault(key, {})[day] = (project, reads)
    levels: dict[int, list[tuple[str, str | None, float]]] = {}
    for key, days in per_key.items():
        ordered = sorted(days)
        for index, day in enumerate(ordered):
            if day < ctx.since_hour // 24 - 7:
                continue
            past = [days[d][1] for d in ordered[:index] if d >= day - c.history_days]
            if len(past) < c.min_history_days:
                continue
            project, reads = days[day]
            levels.setdefault(day, []).append((key, project, _standard_change(reads, past)))
    ctx.cache["across_levels"] = levels
    return levels


def _difference_z(mine: list[float], others: list[float]) -> float:
    spread_mine = statistics.pvariance(mine) if len(mine) > 1 else 0.0
    spread_others = statistics.pvariance(others) if len(others) > 1 else 0.0
    # Floors: a handful of contractors never gives a certain mean.
    error = math.sqrt(max(spread_mine, 0.01) / len(mine) + max(spread_others, 0.01) / len(others))
    return (statistics.fmean(mine) - statistics.fmean(others)) / error
