"""Watch rounds that cost what is new: the series detectors re-run only where inputs changed.

A `watch` round used to read every contractor's hourly rollup over the whole look-back
(history plus episode days, ~6 weeks) and run every detector on every contractor. The
detectors' inputs for one vendor are: that vendor's hourly rows, the cross-vendor
per-project daily reads (`project_days`, the project peers), the scored window's first
hour, the last day scored and the address-locations table. `IncrementalDetector` keeps
those inputs between rounds (in the watch process's memory; the rollup in the database is
the persisted state they are rebuilt from after a restart):

- it re-reads only the hours that can have changed since the last round (from the last
  round's end minus the rollup's late hours) and the daily reads of their days;
- a vendor whose rows in those hours are unchanged, whose projects' daily reads are
  unchanged, keeps its findings from the last round; every other vendor is scored again
  with exactly the inputs a full round would give it;
- when the scored window's first hour, the last day or the locations table change, every
  vendor is scored again. Watch rounds start their window at a day boundary
  (`window_start`) so that this happens once a day, not every round.

The record detectors (canary touches, catalogue mismatches) read the window's raw rows and
run every round. The result is the full round's, finding for finding: tested against
`detect` round by round on simulated logs, in memory and on PostgreSQL.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.anomaly.config import AnomalyConfig
from gateway.anomaly.data import (
    HourlyRow,
    LogSource,
    Series,
    build_series,
    contractor_key,
    project_days,
)
from gateway.anomaly.detectors.baselines import Grants, read_grants
from gateway.anomaly.detectors.common import Context, Finding, Peers
from gateway.anomaly.detectors.records import canary_touches, catalogue_mismatches
from gateway.anomaly.detectors.run import (
    ALL_DETECTORS,
    attach_evidence,
    locations_for,
    lookback_days,
    merge,
    new_context,
    score_series,
    score_vendor,
)

Across = dict[tuple[int, str | None], list[tuple[str, int]]]


def window_start(until_ts: float, scan_window_hours: int) -> float:
    """The first instant a watch round scores: the start of the day (UTC) that holds
    `until - scan_window_hours`, so the window moves once a day."""
    return math.floor((until_ts - scan_window_hours * 3600) / 86400) * 86400.0


@dataclass
class RoundFigures:
    vendors: int = 0
    rescored_vendors: int = 0
    contractors: int = 0
    rescored_contractors: int = 0
    reread_hours: int = 0
    full: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "vendors": self.vendors,
            "rescored_vendors": self.rescored_vendors,
            "contractors": self.contractors,
            "rescored_contractors": self.rescored_contractors,
            "reread_hours": self.reread_hours,
            "full": self.full,
        }


@dataclass
class _Inputs:
    since_hour: int
    start_hour: int
    end_hour: int
    last_day: int
    locations: Any
    # vendor -> contractor (or address) key -> its hourly rows
    rows: dict[str | None, dict[str, list[HourlyRow]]] = field(default_factory=dict)
    series: dict[str | None, dict[str, Series]] = field(default_factory=dict)
    daily: dict[int, Across] = field(default_factory=dict)  # day -> project_days of it
    # vendor -> key -> the series detectors' findings (before merging)
    findings: dict[str | None, dict[str, list[Finding]]] = field(default_factory=dict)
    grants: list[Any] = field(default_factory=list)  # the policy grants the signals read


class IncrementalDetector:
    def __init__(self, source: LogSource, config: AnomalyConfig, *, late_hours: int = 2) -> None:
        self.source = source
        self.config = config
        self.late_hours = late_hours
        self._last: _Inputs | None = None
        self.figures = RoundFigures()

    def round(
        self,
        since_ts: float,
        end_ts: float,
        *,
        on_start: Callable[[int], None] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[Finding]:
        """The findings `detect(source, config, since_ts, end_ts)` would return."""
        since_hour = int(since_ts // 3600)
        end_hour = math.ceil(end_ts / 3600)
        start_hour = since_hour - 24 * lookback_days(self.config)
        locations = locations_for(self.config)
        last = self._last
        current = _Inputs(since_hour, start_hour, end_hour, (end_hour - 1) // 24, locations)
        window = (since_hour, start_hour, current.last_day)
        # Rows are carried over unless the window moved backwards, or by a part of a day
        # (the first day's daily reads would then be partial), or the locations changed.
        full = (
            last is None
            or last.locations is not locations
            or end_hour < last.end_hour
            or start_hour < last.start_hour
            or (start_hour != last.start_hour and bool(start_hour % 24 or last.start_hour % 24))
        )
        figures = RoundFigures(full=full)
        if full or last is None:
            for vendor, _ in self.source.vendors(start_hour, end_hour):
                current.rows[vendor] = _by_key(self.source.hourly(vendor, start_hour, end_hour))
            current.daily = _by_day(self.source.daily_reads(start_hour, end_hour))
            changed: dict[str | None, set[str]] = {v: set(keys) for v, keys in current.rows.items()}
            recent: dict[str | None, set[str]] = changed
            figures.reread_hours = end_hour - start_hour
        else:
            changed, recent = self._update(last, current)
            figures.reread_hours = end_hour - self._reread_from(last)
            if (last.since_hour, last.start_hour, last.last_day) != window:
                # A new day: what every detector scores moved, so everyone is scored
                # again; hours that left the look-back are dropped (no re-read).
                _trim(current, changed)
                recent = {vendor: set(keys) for vendor, keys in current.rows.items()}
        across: Across = {}
        for day_across in current.daily.values():
            across.update(day_across)
        vendors = sorted(current.rows, key=lambda vendor: vendor or "")
        ctx = new_context(self.config, self.source, since_hour, end_hour, locations, across)
        current.grants = read_grants(ctx)
        ctx.cache["grants"] = Grants(current.grants)
        if last is not None and not full and last.grants != current.grants:
            # A policy change explains (or stops explaining) first accesses: score everyone.
            recent = {vendor: set(keys) for vendor, keys in current.rows.items()}
        if on_start is not None:
            on_start(sum(len(current.rows[v]) for v in vendors if recent.get(v)))
        for vendor in vendors:
            keys = current.rows[vendor]
            before = last.series.get(vendor, {}) if last is not None and not full else {}
            series = {
                key: before[key]
                if key in before and key not in changed.get(vendor, ())
                else build_series(rows)[key]
                for key, rows in keys.items()
            }
            current.series[vendor] = series
            rescore = recent.get(vendor, set())
            if not rescore:
                current.findings[vendor] = last.findings[vendor] if last is not None else {}
                continue
            figures.rescored_vendors += 1
            peers = Peers(series, self.config, across)
            kept = last.findings.get(vendor, {}) if last is not None and not full else {}
            found: dict[str, list[Finding]] = {}
            for key in sorted(series):
                if key in rescore or key not in kept:
                    found[key] = self._score(series[key], peers, ctx)
                    figures.rescored_contractors += 1
                    if progress is not None:
                        progress(1)
                else:
                    found[key] = kept[key]
            # The vendor's own findings (vendor:<name> never names a contractor).
            found[f"vendor:{vendor}"] = [
                copy.deepcopy(f) for f in score_vendor(vendor, peers, ctx, ALL_DETECTORS)
            ]
            current.findings[vendor] = found
        figures.vendors = len(vendors)
        figures.contractors = sum(len(current.rows[v]) for v in vendors)
        found_all = [
            copy.deepcopy(finding)
            for vendor in vendors
            for key in sorted(current.findings[vendor])
            for finding in current.findings[vendor][key]
        ]
        found_all += canary_touches(ctx)
        found_all += catalogue_mismatches(ctx)
        merged = merge(found_all)
        attach_evidence(self.source, merged)
        self._last, self.figures = current, figures
        return merged

    def _reread_from(self, last: _Inputs) -> int:
        return max(last.start_hour, last.end_hour - self.late_hours - 1)

    def _update(
        self, last: _Inputs, current: _Inputs
    ) -> tuple[dict[str | None, set[str]], dict[str | None, set[str]]]:
        """Carry the last round's rows over and re-read the hours that can have changed.

        Returns, per vendor, the keys whose rows changed (their series are rebuilt) and the
        keys to score again: those, and everyone active on a day whose data changed (their
        own or their peers' figures of that day moved; earlier days are as they were)."""
        reread = self._reread_from(last)
        first_day = reread // 24
        fresh: dict[str | None, dict[str, list[HourlyRow]]] = {
            vendor: _by_key(self.source.hourly(vendor, reread, current.end_hour))
            for vendor, _ in self.source.vendors(reread, current.end_hour)
        }
        changed: dict[str | None, set[str]] = {}
        for vendor in set(last.rows) | set(fresh):
            old_keys = last.rows.get(vendor, {})
            new_keys = fresh.get(vendor, {})
            merged: dict[str, list[HourlyRow]] = {}
            for key in set(old_keys) | set(new_keys):
                old = old_keys.get(key, [])
                kept = [row for row in old if row.hour < reread]
                now = new_keys.get(key, [])
                if Counter(row for row in old if row.hour >= reread) != Counter(now):
                    changed.setdefault(vendor, set()).add(key)
                if kept or now:
                    merged[key] = kept + now
            if merged:
                current.rows[vendor] = merged
        current.daily = {day: value for day, value in last.daily.items() if day < first_day}
        from_hour = max(first_day * 24, current.start_hour)
        current.daily.update(
            _by_day(self.source.daily_reads(from_hour, current.end_hour), first_day)
        )
        recent: dict[str | None, set[str]] = {}
        for vendor, keys in current.rows.items():
            touched = changed.get(vendor, set())
            if not touched and not any(
                _changed(last.daily.get(day, {}), current.daily.get(day, {}))
                for day in set(current.daily) | set(last.daily)
                if day >= first_day
            ):
                continue
            since_first_day = first_day * 24
            active = {
                key for key, rows in keys.items() if any(r.hour >= since_first_day for r in rows)
            }
            if touched or active:
                recent[vendor] = touched | active
        return changed, recent

    def _score(self, series: Series, peers: Peers, ctx: Context) -> list[Finding]:
        found = score_series(series, peers, ctx, ALL_DETECTORS)
        return [copy.deepcopy(finding) for finding in found]


def _trim(current: _Inputs, changed: dict[str | None, set[str]]) -> None:
    """Drop the rows and daily reads before the look-back's first hour (a whole day)."""
    start = current.start_hour
    for vendor in list(current.rows):
        keys = current.rows[vendor]
        for key in list(keys):
            rows = keys[key]
            if rows and min(row.hour for row in rows) < start:
                changed.setdefault(vendor, set()).add(key)
                kept = [row for row in rows if row.hour >= start]
                if kept:
                    keys[key] = kept
                else:
                    del keys[key]
        if not keys:
            del current.rows[vendor]
    current.daily = {day: value for day, value in current.daily.items() if day >= start // 24}


def _by_key(rows: Iterable[HourlyRow]) -> dict[str, list[HourlyRow]]:
    out: dict[str, list[HourlyRow]] = {}
    for row in rows:
        out.setdefault(contractor_key(row.issuer, row.subject, row.client_ip), []).append(row)
    return out


def _by_day(
    rows: Iterable[tuple[int, str, str | None, int]], first_day: int | None = None
) -> dict[int, Across]:
    per_day: dict[int, list[tuple[int, str, str | None, int]]] = {}
    for row in rows:
        if first_day is None or row[0] >= first_day:
            per_day.setdefault(row[0], []).append(row)
    return {day: project_days(day_rows) for day, day_rows in per_day.items()}


def _changed(before: Across, after: Across) -> set[tuple[int, str | None]]:
    return {
        key
        for key in set(before) | set(after)
        if sorted(before.get(key, [])) != sorted(after.get(key, []))
    }
