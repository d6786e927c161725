"""The detectors: each turns hourly aggregates (and a few raw rows) into explained findings.

Every finding names its detector, a severity, the contractor, the window it covers, when
a scan could first have raised it (`detected_at`), a score, an explanation that cites the
numbers it was decided on, evidence (access-log row ids and request ids, plus the filters
that list every row behind it) and a dedup key: detector + contractor + window, so a
rescan finds the same keys and updates alerts instead of adding new ones.

All detectors are causal: a decision about an hour or a day uses only data up to its end,
so one retrospective scan over a month (the evaluation) raises what periodic scans over
that month would have raised, at the same times.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import os
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.anomaly.config import SEVERITIES, AnomalyConfig, AnomalyConfigError
from gateway.anomaly.data import (
    KINDS,
    PROBE_KINDS,
    DetailRow,
    Hour,
    LogSource,
    Series,
    Who,
    build_series,
    contractor_key,
    project_days,
    split_record_id,
)
from gateway.anomaly.locations import IpLocations, load_locations

# A slow-exfiltration episode that started up to this many days before `since` keeps its
# key (its first day); the scan loads this much more history for it.
log = logging.getLogger(__name__)
EPISODE_DAYS = 14
EVIDENCE_ROWS = 20
MAD_SCALE = 1.4826


@dataclass
class Finding:
    detector: str
    severity: str
    who: Who
    window_start: float
    window_end: float
    detected_at: float
    score: float
    explanation: str
    dedup_key: str
    project: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    evidence_kinds: tuple[str, ...] = ("read",)

    def as_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "severity": self.severity,
            "contractor": self.who.key,
            "vendor": self.who.vendor,
            "project": self.project,
            "window_start": iso(self.window_start),
            "window_end": iso(self.window_end),
            "detected_at": iso(self.detected_at),
            "score": round(self.score, 3),
            "explanation": self.explanation,
            "dedup_key": self.dedup_key,
            "evidence": self.evidence,
        }


# --- small helpers ---------------------------------------------------------------------


def iso(ts: float) -> str:
    return datetime.fromtimestamp(round(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def hour_text(hour: int) -> str:
    return datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%d %H:00 UTC")


def day_text(day: int) -> str:
    return datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%d")


def clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M")


def num(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.1f}"


def weekend(day: int) -> bool:
    return (day + 3) % 7 >= 5  # epoch day 0 was a Thursday


def median_mad(values: Sequence[float]) -> tuple[float, float]:
    middle = statistics.median(values)
    return middle, statistics.median(abs(v - middle) for v in values)


def median_without(values: Sequence[float], removed: Sequence[float]) -> float:
    """Median of the sorted multiset `values` less the sorted sub-multiset `removed`
    (equal to `statistics.median` of the difference), in O(log² n)."""
    size = len(values) - len(removed)
    if size <= 0:
        raise ValueError("the median of nothing")

    def kth(k: int) -> float:
        # The smallest value v with at least k + 1 remaining elements <= v.
        lo, hi = 0, len(values) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            v = values[mid]
            if bisect.bisect_right(values, v) - bisect.bisect_right(removed, v) >= k + 1:
                hi = mid
            else:
                lo = mid + 1
        return values[lo]

    if size % 2:
        return kth(size // 2)
    return (kth(size // 2 - 1) + kth(size // 2)) / 2


def severity_at_least(severity: str, floor: str) -> bool:
    return SEVERITIES.index(severity) >= SEVERITIES.index(floor)


def spearman(values: Sequence[float]) -> float:
    """Rank correlation between position (time order) and value."""
    n = len(values)
    if n < 3:
        return 0.0
    order = sorted(range(n), key=lambda i: values[i])
    ranks = [0.0] * n
    i = 0
    while i < n:
        j = i
        while j + 1 < n and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    mean = (n - 1) / 2
    cov = sum((k - mean) * (r - mean) for k, r in enumerate(ranks))
    var_pos = sum((k - mean) ** 2 for k in range(n))
    var_rank = sum((r - mean) ** 2 for r in ranks)
    if var_rank == 0:
        return 0.0
    return cov / math.sqrt(var_pos * var_rank)


# --- peers -----------------------------------------------------------------------------


class Peers:
    """Baselines from the other contractors of the same vendor (and project)."""

    def __init__(
        self,
        series: dict[str, Series],
        config: AnomalyConfig,
        project_days: dict[tuple[int, str | None], list[tuple[str, int]]] | None = None,
    ) -> None:
        self.config = config
        # (day, project) -> [(contractor, reads)] over every vendor: a project's ramp-up
        # or deadline is shared by everyone on it.
        self.project_days = project_days or {}
        # (project or None for vendor-wide) -> sorted [(hour, reads, key)]
        hourly: dict[str | None, list[tuple[int, int, str]]] = {}
        # day -> [(key, project, reads, tasks)]
        self.daily: dict[int, list[tuple[str, str | None, int, int]]] = {}
        for key, s in series.items():
            if s.who.subject is None:
                continue
            for hour, stats in s.hours.items():
                if stats.reads:
                    entry = (hour, stats.reads, key)
                    hourly.setdefault(stats.project, []).append(entry)
                    hourly.setdefault(None, []).append(entry)
            for day, stats in s.days().items():
                if stats.active:
                    self.daily.setdefault(day, []).append(
                        (key, stats.project, stats.reads, len(stats.tasks))
                    )
        for entries in hourly.values():
            entries.sort()
        self.hourly = hourly
        self._hours = {p: [e[0] for e in entries] for p, entries in hourly.items()}
        # group -> key -> ([hours], [reads]) of that contractor alone, in hour order.
        self._own: dict[str | None, dict[str, tuple[list[int], list[int]]]] = {}
        for group, entries in hourly.items():
            own = self._own[group] = {}
            for hour, reads, key in entries:
                hours_reads = own.setdefault(key, ([], []))
                hours_reads[0].append(hour)
                hours_reads[1].append(reads)
        self._window_cache: dict[tuple[str | None, int], list[int]] = {}
        self._level_cache: dict[tuple[str | None, int], float | None] = {}
        self._then_cache: dict[tuple[str | None, int, str], float | None] = {}

    def hour_baseline(
        self, key: str, project: str | None, hour: int
    ) -> tuple[float, float, int, str, float | None] | None:
        """Peers' active hours in the 24 h up to `hour`: (median, MAD, peers, group, then),
        `then` the same peers' median hour over the history before that day."""
        for group in (project, None):
            if group not in self.hourly:
                continue
            hours = self._hours[group]
            entries = self.hourly[group]
            lo = bisect.bisect_right(hours, hour - 24)
            hi = bisect.bisect_right(hours, hour)
            values = [reads for _, reads, other in entries[lo:hi] if other != key]
            peers = {other for _, _, other in entries[lo:hi] if other != key}
            if len(peers) >= self.config.peer_min:
                middle, mad = median_mad(values)
                day = hour // 24
                then_key = (group, day, key)
                if then_key not in self._then_cache:
                    self._then_cache[then_key] = self._history_median(group, day, key)
                return middle, mad, len(peers), group or "all projects", self._then_cache[then_key]
        return None

    def _history_median(self, group: str | None, day: int, key: str) -> float | None:
        """Median of the other contractors' active hours of `group` over the history
        before `day`: every peer's hours in that window, sorted once per (group, day),
        less this contractor's own."""
        start, stop = (day - self.config.history_days) * 24, day * 24
        window = self._window_cache.get((group, day))
        if window is None:
            hours = self._hours[group]
            lo, hi = bisect.bisect_left(hours, start), bisect.bisect_left(hours, stop)
            window = self._window_cache[(group, day)] = sorted(
                reads for _, reads, _ in self.hourly[group][lo:hi]
            )
        own_hours, own_reads = self._own[group].get(key, ([], []))
        lo, hi = bisect.bisect_left(own_hours, start), bisect.bisect_left(own_hours, stop)
        own = sorted(own_reads[lo:hi])
        if len(window) - len(own) < self.config.peer_min:
            return None
        return median_without(window, own)

    def day_baseline(
        self, key: str, project: str | None, day: int
    ) -> tuple[float, int, str] | None:
        """Median reads of the peers active that day: (median, peers, group): same vendor
        and project, else the same project at any vendor, else the whole vendor."""
        entries = self.daily.get(day, [])
        minimum = self.config.peer_min
        values = [r for k, p, r, _ in entries if k != key and p == project]
        if len(values) >= minimum:
            return statistics.median(values), len(values), f"project {project}"
        values = [r for k, r in self.project_days.get((day, project), []) if k != key]
        if len(values) >= minimum:
            return statistics.median(values), len(values), f"project {project}, all vendors"
        values = [r for k, _, r, _ in entries if k != key]
        if len(values) >= minimum:
            return statistics.median(values), len(values), "all projects"
        return None

    def project_level(self, project: str | None, day: int) -> float | None:
        """Median reads per contractor-day on a project that day, all vendors."""
        cache_key = (project, day)
        if cache_key not in self._level_cache:
            values = [r for _, r in self.project_days.get((day, project), [])]
            self._level_cache[cache_key] = (
                statistics.median(values) if len(values) >= self.config.peer_min else None
            )
        return self._level_cache[cache_key]

    def team_rise(
        self, series: Series, project: str | None, day: int, history: list[int]
    ) -> tuple[float, float, float] | None:
        """How the level of the contractor's team moved since their history was recorded:
        (now / then, now, then), in median reads per contractor-day, all vendors. `now` is
        the current project over the last two weekdays, `then` the projects the contractor
        worked on during their history weekdays. A ramp-up, a deadline or a move to a busier
        project raises the team, not
        just one contractor."""
        # Weekdays only: weekend levels rest on a handful of short days.
        recent = [d for d in range(day - 1, day - 8, -1) if not weekend(d)][:2]
        now = [level for d in recent if (level := self.project_level(project, d)) is not None]
        days = series.days()
        then = [
            level
            for d in history
            if d < min(recent, default=day)
            and not weekend(d)
            and (level := self.project_level(days[d].project, d)) is not None
        ]
        if not now or not then:
            return None
        current, before = statistics.median(now), statistics.median(then)
        return current / max(before, 1.0), current, before

    def tasks_p90(self, key: str, day: int) -> tuple[float, int] | None:
        """90th percentile of distinct tasks per active day, vendor-wide, last 7 days."""
        values = [
            tasks
            for d in range(day - 6, day + 1)
            for k, _, _, tasks in self.daily.get(d, [])
            if k != key
        ]
        if len(values) < self.config.peer_min:
            return None
        values.sort()
        return values[min(len(values) - 1, int(0.9 * len(values)))], len(values)


# --- the detectors ---------------------------------------------------------------------


@dataclass
class Context:
    config: AnomalyConfig
    source: LogSource
    since_hour: int
    end_hour: int
    locations: IpLocations | None = None


@dataclass
class OwnHistory:
    active_days: list[int]
    active_hour_median: float
    active_hour_mad: float = 0.0

    @property
    def days(self) -> int:
        return len(self.active_days)


def own_history(series: Series, day: int, config: AnomalyConfig) -> OwnHistory:
    days = series.days()
    active = [d for d in range(day - config.history_days, day) if d in days and days[d].active]
    reads = [
        series.hours[h].reads
        for d in active
        for h in days[d].active_hours
        if series.hours[h].reads > 0
    ]
    if not reads:
        return OwnHistory(active, 0.0, 0.0)
    middle, mad = median_mad(reads)
    return OwnHistory(active, middle, mad)


def _window_reads(series: Series, last_hour: int, width: int) -> int:
    return sum(
        series.hours[h].reads
        for h in range(last_hour - width + 1, last_hour + 1)
        if h in series.hours
    )


def volume_spike(series: Series, peers: Peers, ctx: Context) -> list[Finding]:
    """An hour (or two) far above the contractor's own hours of the same kind, and above
    peers; new contractors against peers only.

    Two- and three-hour windows catch a burst that straddles an hour boundary or is
    spread over a few hours.
    """
    c = ctx.config
    found: list[Finding] = []
    cache: dict[int, OwnHistory] = {}
    days = series.days()
    for hour in sorted(series.hours):
        if hour < ctx.since_hour or series.hours[hour].reads == 0:
            continue
        for width in (1, 2, 3):
            x = _window_reads(series, hour, width)
            if x < c.volume_min_records:
                continue
            finding = _volume_window(series, peers, ctx, hour, width, x, cache, days)
            if finding is not None:
                found.append(finding)
                break
    return found


def _volume_window(
    series: Series,
    peers: Peers,
    ctx: Context,
    hour: int,
    width: int,
    x: int,
    cache: dict[int, OwnHistory],
    days: dict[int, Any],
) -> Finding | None:
    c = ctx.config
    stats = series.hours[hour]
    day = hour // 24
    own = cache.get(day) or cache.setdefault(day, own_history(series, day, c))
    peer = peers.hour_baseline(series.who.key, stats.project, hour)
    established = own.days >= c.min_history_days
    first_hour = hour - width + 1
    span = (
        f"the hour {hour_text(hour)}"
        if width == 1
        else f"the {width} hours from {hour_text(first_hour)}"
    )
    parts = [f"fetched {num(x)} records in {span}"]
    peer_level = peer[0] * width if peer else None
    if established:
        same_kind = [d for d in own.active_days if weekend(d) == weekend(day)]
        label = f"{'weekend' if weekend(day) else 'weekday'} {first_hour % 24:02d}:00 hours"
        sample = [_window_reads(series, d * 24 + hour % 24, width) for d in same_kind]
        if len(sample) < 4:
            sample = [
                _window_reads(series, h, width)
                for d in own.active_days
                for h in days[d].active_hours
                if series.hours[h].reads
            ]
            label = "active hours"
        middle = statistics.median(sample)
        # A rise the whole team shares is no one contractor's spike. Preferably the same
        # peers' hours now (last 24 h, today's included) against their hours during the
        # history; without enough peers on the project, the project's level across
        # vendors (weekdays, daily); else the whole vendor's hours.
        trend: tuple[float, ...] | None = None
        if peer is not None and peer[4] and peer[3] == stats.project:
            trend = (peer[0] / peer[4],)
        else:
            trend = peers.team_rise(series, stats.project, day, own.active_days)
            if trend is None and peer is not None and peer[4]:
                trend = (peer[0] / peer[4],)
        rise = max(1.0, trend[0]) if trend else 1.0
        middle *= rise
        level = max(middle, own.active_hour_median * width * rise, 1.0)
        # The expected value is hour-of-week aware; the spread comes from all the
        # contractor's active hours (a handful of same-hour samples gives no stable MAD).
        scale = max(
            MAD_SCALE * own.active_hour_mad * math.sqrt(width), 0.3 * level, c.volume_min_scale
        )
        z_own = (x - middle) / scale
        ratio_own = x / level
        if z_own < c.volume_own_z or ratio_own < c.volume_own_ratio:
            return None
        if peer_level is not None and x / max(peer_level, 1.0) < c.volume_peer_ratio:
            return None
        score = ratio_own
        parts.append(
            f"own median for {label} {num(middle)} (MAD of own hours {num(own.active_hour_mad)}, "
            f"{own.days} active days; "
            f"z {z_own:.1f}, {ratio_own:.1f}x own level {num(level)})"
        )
        if rise > 1.0 and trend is not None:
            parts.append(f"own levels scaled by {rise:.2f} for the rise of the team's level")
    else:
        if peer is None or peer_level is None:
            return None
        scale = max(MAD_SCALE * peer[1] * math.sqrt(width), 0.3 * peer_level, c.volume_min_scale)
        z_peer = (x - peer_level) / scale
        ratio_peer = x / max(peer_level, 1.0)
        if ratio_peer < c.volume_new_peer_ratio or z_peer < c.volume_new_peer_z:
            return None
        score = ratio_peer
        parts.append(
            f"new contractor ({own.days} active days): scored against peers only (z {z_peer:.1f})"
        )
    if peer is not None and peer_level is not None:
        parts.append(
            f"peers ({series.who.vendor}/{peer[3]}, {peer[2]} contractors, last 24 h) median "
            f"{num(peer[0])} an hour ({x / max(peer_level, 1.0):.1f}x)"
        )
    else:
        parts.append("no peer baseline (too few peers)")
    severity = "critical" if score >= 10 else "high" if score >= 5 else "medium"
    return Finding(
        "volume_spike",
        severity,
        series.who,
        first_hour * 3600,
        (hour + 1) * 3600,
        (hour + 1) * 3600,
        score,
        "; ".join(parts),
        f"volume_spike:{series.who.key}:{day_text(day)}",
        project=stats.project,
        evidence={
            "hours": [
                {"hour": hour_text(h), "records": series.hours[h].reads}
                for h in range(first_hour, hour + 1)
                if h in series.hours
            ],
            "row_range": [
                min(
                    series.hours[h].first_id
                    for h in range(first_hour, hour + 1)
                    if h in series.hours
                ),
                stats.last_id,
            ],
        },
    )


def slow_exfiltration(series: Series, peers: Peers, ctx: Context) -> list[Finding]:
    """Reads per day rising for days (EWMA), against own baseline, peers and own work."""
    c = ctx.config
    days = series.days()
    active = sorted(d for d, stats in days.items() if stats.active)
    if not active:
        return []
    first_day = ctx.since_hour // 24 - EPISODE_DAYS
    last_day = (ctx.end_hour - 1) // 24
    # y: log reads relative to the peers that day; w: log read requests per annotation
    # (requests, not records: a browsed list page is one request, many records).
    y: dict[int, float] = {}
    w: dict[int, float] = {}
    peer_reads: dict[int, float] = {}
    peer_group: dict[int, str] = {}
    for d in active:
        stats = days[d]
        baseline = peers.day_baseline(series.who.key, stats.project, d)
        if baseline is None:
            continue
        peer_reads[d] = baseline[0]
        peer_group[d] = baseline[2]
        y[d] = math.log((stats.reads + 1) / (baseline[0] + 1))
        w[d] = math.log((stats.read_requests + 1) / (stats.annotations + 1))
    # Days without a peer baseline (a weekend nobody else worked) are not scored.
    active = [d for d in active if d in y]
    alpha = c.exfil_alpha
    threshold = math.log(c.exfil_ratio)
    unworked_threshold = math.log(c.exfil_unworked_ratio)
    firing: dict[int, dict[str, Any]] = {}
    for d in active:
        if d < first_day or d > last_day or d not in y:
            continue
        history = [h for h in active if d - c.history_days <= h < d - c.exfil_baseline_gap_days]
        history = [h for h in history if h in y]
        if len(history) < c.exfil_min_baseline_days:
            continue
        recent = [h for h in active if d - c.exfil_baseline_gap_days <= h <= d and h in y]
        base_y, spread_y = median_mad([y[h] for h in history])
        annotated = sum(days[h].annotations for h in history) > 0
        base_w, spread_w = median_mad([w[h] for h in history])
        weights = [alpha * (1 - alpha) ** i for i in range(len(recent))]
        total = sum(weights)
        # The EWMA's own noise: the day-to-day spread (robust) times this factor.
        damping = math.sqrt(sum(wt * wt for wt in weights)) / total
        newest_first = list(reversed(recent))
        e_y = sum(wt * (y[h] - base_y) for wt, h in zip(weights, newest_first, strict=True)) / total
        e_w = sum(wt * (w[h] - base_w) for wt, h in zip(weights, newest_first, strict=True)) / total
        z_y = e_y / (max(MAD_SCALE * spread_y, 0.05) * damping)
        z_w = e_w / (max(MAD_SCALE * spread_w, 0.05) * damping)
        if e_y < threshold:
            continue
        if annotated:
            # Both signals up: reads above the own level (peer-normalised), and read
            # requests per annotation up (records fetched, not worked on); the z-score of
            # the latter, or of both combined.
            if e_w < unworked_threshold or max(z_w, (z_y + z_w) / math.sqrt(2)) < c.exfil_z:
                continue
        elif z_y < c.exfil_z:
            continue
        if annotated:
            # Fetches the contractor's own annotation rate does not account for.
            excess = sum(
                days[h].read_requests + 1 - math.exp(base_w) * (days[h].annotations + 1)
                for h in recent
            )
        else:
            excess = sum(days[h].reads + 1 - math.exp(base_y) * (peer_reads[h] + 1) for h in recent)
        if excess < c.exfil_min_excess_records:
            continue
        firing[d] = {
            "z": z_y,
            "z_unworked": z_w,
            "group": peer_group.get(d, "-"),
            "ewma_ratio": math.exp(e_y),
            "unworked_ratio": math.exp(e_w) if annotated else None,
            "base_daily": math.exp(base_y) * (statistics.median(peer_reads[h] for h in history)),
            "recent": recent,
            "excess": excess,
            "baseline_days": len(history),
        }
    # Sustained: the condition holds on `exfil_min_days` consecutive active days.
    index = {d: i for i, d in enumerate(active)}
    sustained = [
        d
        for d in sorted(firing)
        if index[d] + 1 >= c.exfil_min_days
        and all(active[index[d] - k] in firing for k in range(c.exfil_min_days))
    ]
    found: list[Finding] = []
    episode_start: int | None = None
    previous: int | None = None
    for d in sustained:
        if previous is None or index[d] != index[previous] + 1:
            episode_start = active[index[d] - c.exfil_min_days + 1]
        previous = d
        if d < ctx.since_hour // 24:
            continue
        info = firing[d]
        recent = info["recent"]
        recent_reads = statistics.mean(days[h].reads for h in recent)
        peer_now = statistics.median(peer_reads[h] for h in recent)
        parts = [
            f"reads per day rose for {c.exfil_min_days}+ active days to "
            f"{info['ewma_ratio']:.2f}x the contractor's own level relative to peers (EWMA, "
            f"alpha {alpha}, z {info['z']:.1f}): {num(round(recent_reads))}/day over the last "
            f"{len(recent)} active days vs a baseline of about "
            f"{num(round(info['base_daily']))}/day "
            f"({info['baseline_days']} earlier active days)",
            f"peers ({series.who.vendor}, {info['group']}) median {num(round(peer_now))}/day",
            f"about {num(round(info['excess']))} fetches above the expected level",
        ]
        if info["unworked_ratio"] is not None:
            parts.append(
                f"read requests per annotation submitted "
                f"{info['unworked_ratio']:.2f}x own baseline "
                f"(z {info['z_unworked']:.1f}: records fetched but not worked on)"
            )
        score = info["ewma_ratio"]
        assert episode_start is not None
        found.append(
            Finding(
                "slow_exfiltration",
                "high" if score >= 1.5 else "medium",
                series.who,
                recent[0] * 86400,
                (d + 1) * 86400,
                (d + 1) * 86400,
                score,
                "; ".join(parts),
                f"slow_exfiltration:{series.who.key}:{day_text(episode_start)}",
                project=days[d].project,
                evidence={
                    "days": [
                        {
                            "day": day_text(h),
                            "records": days[h].reads,
                            "annotations": days[h].annotations,
                            "peer_median": round(peer_reads[h], 1),
                        }
                        for h in recent
                    ]
                },
            )
        )
    return found


def breadth(series: Series, peers: Peers, ctx: Context) -> list[Finding]:
    """Far more distinct projects/tasks in a day than the vendor's contractors touch."""
    c = ctx.config
    found: list[Finding] = []
    days = series.days()
    for day, stats in days.items():
        if day < ctx.since_hour // 24 or len(stats.tasks) < c.breadth_min_tasks:
            continue
        p90 = peers.tasks_p90(series.who.key, day)
        if p90 is None:
            continue
        limit = max(c.breadth_min_tasks, c.breadth_peer_ratio * max(p90[0], 1))
        own = own_history(series, day, c)
        own_max = max((len(days[d].tasks) for d in own.active_days), default=0)
        if own.days >= c.min_history_days:
            limit = max(limit, 2 * own_max)
        if len(stats.tasks) < limit:
            continue
        seen: set[tuple[str | None, str | None]] = set()
        crossed = day * 24
        for hour in sorted(stats.active_hours):
            seen |= series.hours[hour].tasks
            if len(seen) >= limit:
                crossed = hour
                break
        projects = sorted({p or "-" for p, _ in stats.tasks})
        explanation = (
            f"touched {len(stats.tasks)} distinct project/tasks in {len(projects)} projects on "
            f"{day_text(day)}; peers ({series.who.vendor}, {p90[1]} contractor-days, last 7 days) "
            f"p90 {num(p90[0])}; own maximum {num(own_max)} over {own.days} active days"
        )
        found.append(
            Finding(
                "breadth",
                "high" if len(stats.tasks) >= 2 * limit else "medium",
                series.who,
                day * 86400,
                (day + 1) * 86400,
                (crossed + 1) * 3600,
                len(stats.tasks) / max(p90[0], 1),
                explanation,
                f"breadth:{series.who.key}:{day_text(day)}",
                project=stats.project,
                evidence={"projects": projects[:50], "tasks": len(stats.tasks)},
            )
        )
    return found


def sequence_stats(rows: Sequence[DetailRow], max_stride: int) -> dict[str, Any]:
    """Runs of sequential record ids across requests, and id-vs-time rank correlation."""
    by_prefix: dict[str, list[tuple[str, int, str]]] = {}
    for row in rows:
        if row.record_id is None:
            continue
        parts = split_record_id(row.record_id)
        if parts is not None:
            by_prefix.setdefault(parts[0], []).append((row.request_id, parts[1], row.record_id))
    best: dict[str, Any] = {"run": 0, "requests": 0, "spearman": 0.0, "median_step": None}
    for prefix, items in by_prefix.items():
        run_requests: set[str] = set()
        longest = 0
        previous: int | None = None
        first_of_run = last_of_run = ""
        best_span = ("", "")
        for request_id, number, record_id in items:
            if previous is not None and 1 <= number - previous <= max_stride:
                run_requests.add(request_id)
            else:
                run_requests = {request_id}
                first_of_run = record_id
            previous = number
            last_of_run = record_id
            if len(run_requests) > longest:
                longest = len(run_requests)
                best_span = (first_of_run, last_of_run)
        firsts: list[int] = []
        seen: set[str] = set()
        for request_id, number, _ in items:
            if request_id not in seen:
                seen.add(request_id)
                firsts.append(number)
        steps = [b - a for a, b in itertools.pairwise(firsts)]
        rho = spearman(firsts)
        if longest > best["run"] or (longest == best["run"] and rho > best["spearman"]):
            best = {
                "run": longest,
                "run_ids": f"{best_span[0]}..{best_span[1]}",
                "requests": len(firsts),
                "spearman": rho,
                "median_step": statistics.median(steps) if steps else None,
                "prefix": prefix,
            }
    return best


def enumeration(series: Series, peers: Peers, ctx: Context) -> list[Finding]:
    """Runs of sequential record ids fetched request after request, faster than people work."""
    c = ctx.config
    found: list[Finding] = []
    for hour in sorted(series.hours):
        stats = series.hours[hour]
        if (
            hour < ctx.since_hour
            or stats.read_requests + stats.other_requests < c.enum_min_requests
        ):
            continue
        rows = ctx.source.detail(
            series.who, hour * 3600, (hour + 1) * 3600, ("read", "other"), 50_000
        )
        result = sequence_stats(rows, c.enum_max_stride)
        by_run = result["run"] >= c.enum_min_run
        by_order = (
            result["requests"] >= c.enum_min_requests
            and result["spearman"] >= c.enum_min_spearman
            and result["median_step"] is not None
            and 0 < result["median_step"] <= c.enum_max_median_step
        )
        if not (by_run or by_order):
            continue
        explanation = (
            f"{result['requests']} requests for records {result.get('prefix', '')}* in the hour "
            f"{hour_text(hour)}; longest run of consecutive ids (step 1..{c.enum_max_stride}) "
            f"across requests {result['run']} ({result.get('run_ids', '-')}); id order vs time "
            f"rank correlation {result['spearman']:.2f}, median step {result['median_step']}"
        )
        severity = "high" if result["run"] >= 3 * c.enum_min_run else "medium"
        found.append(
            Finding(
                "enumeration",
                severity,
                series.who,
                hour * 3600,
                (hour + 1) * 3600,
                (hour + 1) * 3600,
                float(max(result["run"], 1)) / c.enum_min_run,
                explanation,
                f"enumeration:{series.who.key}:{day_text(hour // 24)}",
                project=stats.project,
                evidence={
                    "rows": [r.id for r in rows[:EVIDENCE_ROWS]],
                    "request_ids": list(dict.fromkeys(r.request_id for r in rows))[:EVIDENCE_ROWS],
                    "row_range": [rows[0].id, rows[-1].id] if rows else None,
                },
                evidence_kinds=("read", "other"),
            )
        )
    return found


def probing(series: Series, peers: Peers, ctx: Context) -> list[Finding]:
    """Bursts of refused requests over many distinct paths (not one client retrying)."""
    c = ctx.config
    found: list[Finding] = []
    for hour in sorted(series.hours):
        stats = series.hours[hour]
        if hour < ctx.since_hour or stats.probe_requests < c.probe_min_requests:
            continue
        rows = ctx.source.detail(
            series.who, hour * 3600, (hour + 1) * 3600, tuple(sorted(PROBE_KINDS)), 20_000
        )
        requests = list(dict.fromkeys(r.request_id for r in rows))
        paths = Counter(r.path for r in rows)
        if len(requests) < c.probe_min_requests or len(paths) < c.probe_min_distinct_paths:
            continue
        reasons = Counter(r.reason or "-" for r in rows)
        top = ", ".join(f"{reason} {count}" for reason, count in reasons.most_common(4))
        explanation = (
            f"{len(requests)} refused requests over {len(paths)} distinct paths in the hour "
            f"{hour_text(hour)} ({clock(rows[0].ts)}-{clock(rows[-1].ts)}); reasons: {top}; "
            f"e.g. {', '.join(list(paths)[:3])}"
        )
        severity = "high" if len(requests) >= 50 or len(paths) >= 20 else "medium"
        found.append(
            Finding(
                "probing",
                severity,
                series.who,
                hour * 3600,
                (hour + 1) * 3600,
                (hour + 1) * 3600,
                len(paths) / c.probe_min_distinct_paths,
                explanation,
                f"probing:{series.who.key}:{day_text(hour // 24)}",
                evidence={
                    "rows": [r.id for r in rows[:EVIDENCE_ROWS]],
                    "request_ids": requests[:EVIDENCE_ROWS],
                    "row_range": [rows[0].id, rows[-1].id],
                    "reasons": dict(reasons),
                },
                evidence_kinds=tuple(sorted(PROBE_KINDS)),
            )
        )
    return found


def _overlaps(stats: Hour, c: AnomalyConfig) -> list[tuple[str, str, float]]:
    busy = [
        (ip or "-", first, last)
        for ip, (first, last, requests) in stats.ips.items()
        if requests >= c.share_min_requests
    ]
    pairs = []
    for i, (ip_a, first_a, last_a) in enumerate(busy):
        for ip_b, first_b, last_b in busy[i + 1 :]:
            overlap = min(last_a, last_b) - max(first_a, first_b)
            if overlap >= c.share_min_overlap_minutes * 60:
                pairs.append((ip_a, ip_b, overlap))
    return pairs


def credential_sharing(series: Series, peers: Peers, ctx: Context) -> list[Finding]:
    """One contractor active from several addresses at the same time, hour after hour."""
    c = ctx.config
    flagged: dict[int, list[tuple[int, list[tuple[str, str, float]]]]] = {}
    for hour in sorted(series.hours):
        stats = series.hours[hour]
        if hour < ctx.since_hour or len(stats.ips) < 2:
            continue
        pairs = _overlaps(stats, c)
        if pairs:
            flagged.setdefault(hour // 24, []).append((hour, pairs))
    found: list[Finding] = []
    for day, hours in flagged.items():
        if len(hours) < c.share_min_hours:
            continue
        detected_hour = hours[c.share_min_hours - 1][0]
        first_hour, first_pairs = hours[0]
        stats = series.hours[first_hour]
        ip_a, ip_b, overlap = first_pairs[0]
        addresses = sorted({ip for _, pairs in hours for pair in pairs for ip in pair[:2]})

        def describe(ip: str, stats: Hour = stats) -> str:
            first, last, requests = stats.ips[None if ip == "-" else ip]
            return f"{ip} ({int(requests)} requests, {clock(first)}-{clock(last)})"

        explanation = (
            f"active from {len(addresses)} addresses at the same time in {len(hours)} hours on "
            f"{day_text(day)}; first at {hour_text(first_hour)}: {describe(ip_a)} and "
            f"{describe(ip_b)}, overlapping {overlap / 60:.0f} min"
        )
        found.append(
            Finding(
                "credential_sharing",
                "high",
                series.who,
                first_hour * 3600,
                (hours[-1][0] + 1) * 3600,
                (detected_hour + 1) * 3600,
                float(len(hours)),
                explanation,
                f"credential_sharing:{series.who.key}:{day_text(day)}",
                project=stats.project,
                evidence={
                    "addresses": addresses[:20],
                    "hours": [hour_text(h) for h, _ in hours],
                },
                evidence_kinds=("read", "annotate", "other"),
            )
        )
    return found


def impossible_travel(series: Series, peers: Peers, ctx: Context) -> list[Finding]:
    """Seen in two places further apart than anyone could travel in the time between
    (only where the addresses' locations are known: `ip_locations`)."""
    if ctx.locations is None:
        return []
    c = ctx.config
    # (first, last, address, place, hour) of every located address, hour by hour; the day
    # before `since` too, so a jump across the boundary is seen.
    sightings = []
    for hour in sorted(series.hours):
        if hour < ctx.since_hour - 24:
            continue
        for ip, (first, last, _) in series.hours[hour].ips.items():
            place = ctx.locations.lookup(ip)
            if place is not None:
                sightings.append((first, last, ip or "-", place, hour))
    sightings.sort(key=lambda s: (s[0], s[1]))
    jumps: dict[int, tuple[Any, ...]] = {}
    latest = None
    for sighting in sightings:
        if latest is not None and sighting[3] != latest[3] and sighting[0] >= ctx.since_hour * 3600:
            km = latest[3].km_apart(sighting[3])
            hours = max(sighting[0] - latest[1], 0.0) / 3600
            speed = km / max(hours, 1 / 60)
            if km >= c.travel_min_km and speed > c.travel_max_kmh:
                jumps.setdefault(int(sighting[0] // 86400), (latest, sighting, km, hours, speed))
        if latest is None or sighting[1] >= latest[1]:
            latest = sighting
    found = []
    for day, (before, after, km, hours, speed) in jumps.items():
        gap = f"{hours * 60:.0f} min" if hours < 2 else f"{hours:.1f} h"
        explanation = (
            f"seen at {before[3].name} ({before[2]}) until {clock(before[1])} and at "
            f"{after[3].name} ({after[2]}) at {clock(after[0])} on {day_text(day)}: "
            f"{num(round(km))} km apart {'at the same time' if hours == 0 else 'in ' + gap} "
            f"(over {num(round(speed))} km/h; the limit is {num(round(c.travel_max_kmh))} km/h)"
        )
        start, end = sorted((before[1], after[0]))
        found.append(
            Finding(
                "impossible_travel",
                "high",
                series.who,
                start,
                end + 60,
                (after[4] + 1) * 3600,
                speed / c.travel_max_kmh,
                explanation,
                f"impossible_travel:{series.who.key}:{day_text(day)}",
                project=series.hours[after[4]].project,
                evidence={
                    "addresses": [before[2], after[2]],
                    "places": [before[3].name, after[3].name],
                    "km": round(km),
                },
                evidence_kinds=KINDS,
            )
        )
    return found


def off_hours(series: Series, peers: Peers, ctx: Context) -> list[Finding]:
    """Work at hours of day the contractor is never active, from an address their usual
    hours did not use (a shifted schedule from one address, e.g. travel, is not flagged),
    or in volume."""
    c = ctx.config
    found: list[Finding] = []
    days = series.days()
    profiles: dict[int, tuple[OwnHistory, list[float]]] = {}
    for hour in sorted(series.hours):
        stats = series.hours[hour]
        volume = stats.reads + stats.annotations
        if hour < ctx.since_hour or volume < c.offhours_min_records:
            continue
        day = hour // 24
        if day not in profiles:
            own = own_history(series, day, c)
            share = [0.0] * 24
            for d in own.active_days:
                for hod in {h % 24 for h in days[d].active_hours}:
                    share[hod] += 1 / max(own.days, 1)
            profiles[day] = (own, share)
        own, share = profiles[day]
        if own.days < c.min_history_days:
            continue
        hod = hour % 24
        usual = [h for h in range(24) if share[h] >= c.offhours_usual_share]
        if not usual or share[hod] > c.offhours_max_share:
            continue
        distance = min(min(abs(hod - h), 24 - abs(hod - h)) for h in usual)
        if distance < c.offhours_min_distance_hours:
            continue
        known: set[str | None] = set()
        for h in range(hour - 24, hour):
            if h % 24 in usual and h in series.hours and series.hours[h].active:
                known |= set(series.hours[h].ips)
        if not known:
            continue  # no usual-hours work in the last day: a shifted schedule
        new_ips = sorted(ip or "-" for ip in set(stats.ips) - known)
        heavy = stats.reads >= c.offhours_volume_ratio * max(own.active_hour_median, 1)
        if not new_ips and not heavy:
            continue
        usual_text = ", ".join(f"{h:02d}" for h in usual)
        reason = (
            f"from {', '.join(new_ips)}, not used in the usual hours of the last 24 h"
            if new_ips
            else f"{stats.reads / max(own.active_hour_median, 1):.1f}x own median hour "
            f"{num(own.active_hour_median)}"
        )
        found.append(
            Finding(
                "off_hours",
                "medium" if heavy else "low",
                series.who,
                hour * 3600,
                (hour + 1) * 3600,
                (hour + 1) * 3600,
                float(distance),
                f"{num(volume)} records at {hour_text(hour)}, {distance} h outside own usual "
                f"hours (UTC {usual_text}; this hour of day seen on {share[hod]:.0%} of "
                f"{own.days} active days); {reason}",
                f"off_hours:{series.who.key}:{day_text(day)}",
                project=stats.project,
                evidence={"hour": hour_text(hour), "records": volume, "new_addresses": new_ips},
            )
        )
    return found


def locked_attempts(series: Series, peers: Peers, ctx: Context) -> list[Finding]:
    """Any request refused by a lock: the contractor (or their script) keeps trying."""
    found: list[Finding] = []
    for reason, (rows, first_ts, last_ts, first_id, last_id) in series.locks.items():
        if last_ts < ctx.since_hour * 3600:
            continue
        lock_id = reason.partition(":")[2] if reason.startswith("locked:") else reason
        found.append(
            Finding(
                "locked_attempt",
                "high",
                series.who,
                first_ts,
                last_ts + 1,
                first_ts,
                float(rows),
                f"{num(rows)} requests refused by lock {lock_id} between {iso(first_ts)} and "
                f"{iso(last_ts)}: access attempts after the lock",
                f"locked_attempt:{series.who.key}:{lock_id}",
                evidence={"row_range": [int(first_id), int(last_id)], "lock": lock_id},
                evidence_kinds=("locked",),
            )
        )
    return found


SERIES_DETECTORS: dict[str, Callable[[Series, Peers, Context], list[Finding]]] = {
    "volume_spike": volume_spike,
    "slow_exfiltration": slow_exfiltration,
    "breadth": breadth,
    "enumeration": enumeration,
    "probing": probing,
    "credential_sharing": credential_sharing,
    "off_hours": off_hours,
    "impossible_travel": impossible_travel,
    "locked_attempt": locked_attempts,
}
# Unauthenticated traffic (keyed by address) has no history, peers or locks to speak of.
ADDRESS_DETECTORS = ("probing",)


def canary_touches(ctx: Context) -> list[Finding]:
    hits = ctx.source.canary_hits(ctx.since_hour * 3600, ctx.end_hour * 3600)
    grouped: dict[tuple[str, str], list[Any]] = {}
    for hit in hits:
        key = contractor_key(hit.issuer, hit.subject, hit.client_ip)
        grouped.setdefault((key, hit.record_id), []).append(hit)
    found = []
    for (key, record_id), group in grouped.items():
        group.sort(key=lambda h: (h.ts, h.id))
        first = group[0]
        who = Who(
            key,
            first.issuer,
            first.subject,
            first.vendor,
            first.client_ip if first.subject is None else None,
        )
        released = sum(1 for h in group if h.decision == "allow")
        found.append(
            Finding(
                "canary_touch",
                "critical" if released else "high",
                who,
                first.ts,
                group[-1].ts + 1,
                first.ts,
                float(len(group)),
                f"canary record {record_id} touched {len(group)} time(s) "
                f"({released} released), first at {iso(first.ts)} from {first.client_ip}: "
                f"records marked as never to be fetched",
                f"canary_touch:{key}:{record_id}",
                project=first.project,
                evidence={
                    "rows": [h.id for h in group[:EVIDENCE_ROWS]],
                    "request_ids": list(dict.fromkeys(h.request_id for h in group))[:EVIDENCE_ROWS],
                    "record_id": record_id,
                },
            )
        )
    return found


# --- running them ----------------------------------------------------------------------


def merge(findings: Iterable[Finding]) -> list[Finding]:
    """One finding per dedup key: the strongest explanation, the union of windows."""
    merged: dict[str, Finding] = {}
    for finding in findings:
        current = merged.get(finding.dedup_key)
        if current is None:
            merged[finding.dedup_key] = finding
            continue
        strongest = finding if finding.score > current.score else current
        hours = current.evidence.get("hours", []) + [
            h
            for h in finding.evidence.get("hours", [])
            if h not in current.evidence.get("hours", [])
        ]
        evidence = dict(strongest.evidence)
        if hours:
            evidence["hours"] = hours[:48]
        severity = max(current.severity, finding.severity, key=SEVERITIES.index)
        merged[finding.dedup_key] = Finding(
            strongest.detector,
            severity,
            strongest.who,
            min(current.window_start, finding.window_start),
            max(current.window_end, finding.window_end),
            min(current.detected_at, finding.detected_at),
            max(current.score, finding.score),
            strongest.explanation,
            strongest.dedup_key,
            strongest.project,
            evidence,
            strongest.evidence_kinds,
        )
    return sorted(merged.values(), key=lambda f: (f.detected_at, f.dedup_key))


def attach_evidence(source: LogSource, findings: Iterable[Finding]) -> None:
    """Row ids and request ids behind each finding, and the filters that list them all."""
    for finding in findings:
        evidence = finding.evidence
        if "rows" not in evidence:
            rows = source.detail(
                finding.who,
                finding.window_start,
                max(finding.window_end, finding.window_start + 1),
                finding.evidence_kinds,
                EVIDENCE_ROWS,
            )
            evidence["rows"] = [r.id for r in rows]
            evidence["request_ids"] = list(dict.fromkeys(r.request_id for r in rows))
        who = finding.who
        query = {
            "since": iso(finding.window_start),
            "until": iso(max(finding.window_end, finding.window_start + 1)),
        }
        if who.subject is not None:
            query["contractor"] = who.key
        else:
            query["client_ip"] = who.client_ip or ""
        evidence["query"] = query


_locations_cache: dict[str, tuple[float, IpLocations]] = {}


def locations_for(config: AnomalyConfig) -> IpLocations | None:
    """The `ip_locations` table, read again when the file changes. A file that breaks
    while `watch` runs keeps the last good table (with a warning) instead of stopping
    every detector; with no good table yet, the error names the problem."""
    path = config.ip_locations
    if not path:
        return None
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        mtime = -1.0  # load_locations names the problem
    cached = _locations_cache.get(path)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    try:
        table = load_locations(path)
    except AnomalyConfigError as error:
        if cached is None:
            raise
        log.warning("%s; keeping the locations read before", error)
        return cached[1]
    _locations_cache.clear()
    _locations_cache[path] = (mtime, table)
    return table


def lookback_days(config: AnomalyConfig) -> int:
    return config.history_days + EPISODE_DAYS


def detect(
    source: LogSource,
    config: AnomalyConfig,
    since_ts: float,
    end_ts: float,
    *,
    detectors: Sequence[str] | None = None,
    on_start: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Finding]:
    """Run the detectors over [since_ts, end_ts), with history before; merged findings."""
    since_hour = int(since_ts // 3600)
    end_hour = math.ceil(end_ts / 3600)
    start_hour = since_hour - 24 * lookback_days(config)
    ctx = Context(config, source, since_hour, end_hour, locations_for(config))
    wanted = set(detectors or SERIES_DETECTORS.keys() | {"canary_touch"})
    findings: list[Finding] = []
    across = project_days(source.daily_reads(start_hour, end_hour))
    vendors = source.vendors(start_hour, end_hour)
    if on_start is not None:
        on_start(sum(count for _, count in vendors))
    for vendor, _ in vendors:
        series = build_series(source.hourly(vendor, start_hour, end_hour))
        peers = Peers(series, config, across)
        for key in sorted(series):
            s = series[key]
            names = SERIES_DETECTORS if s.who.subject is not None else ADDRESS_DETECTORS
            for name in names:
                if name in wanted:
                    findings.extend(SERIES_DETECTORS[name](s, peers, ctx))
            if progress is not None:
                progress(1)
    if "canary_touch" in wanted:
        findings.extend(canary_touches(ctx))
    merged = merge(findings)
    attach_evidence(source, merged)
    return merged
