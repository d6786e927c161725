"""Running the detectors over a window: the registry, merging, evidence, locations."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence

from gateway.anomaly.config import SEVERITIES, AnomalyConfig, AnomalyConfigError
from gateway.anomaly.data import (
    LogSource,
    Series,
    build_series,
    project_days,
)
from gateway.anomaly.detectors.behaviour import (
    credential_sharing,
    enumeration,
    impossible_travel,
    locked_attempts,
    off_hours,
    probing,
)
from gateway.anomaly.detectors.combined import VENDOR_PREFIX, combined, vendor_rise
from gateway.anomaly.detectors.common import (
    EPISODE_DAYS,
    EVIDENCE_ROWS,
    Context,
    Finding,
    Peers,
    iso,
)
from gateway.anomaly.detectors.records import (
    canary_touches,
    catalogue_mismatches,
)
from gateway.anomaly.detectors.volume import (
    breadth,
    slow_exfiltration,
    volume_spike,
)
from gateway.anomaly.locations import IpLocations, load_locations

log = logging.getLogger(__name__)

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
# Detectors of single records, run over the window's raw rows, not the series.
RECORD_DETECTORS = frozenset({"canary_touch", "catalogue_mismatch"})
# Unauthenticated traffic (keyed by address) has no history, peers or locks to speak of.
ADDRESS_DETECTORS = ("probing",)
# Detectors over the others' findings and weak signals (detectors/combined.py).
COMBINING_DETECTORS = frozenset({"combined", "vendor_rise"})


def score_series(
    series: Series, peers: Peers, ctx: Context, wanted: set[str] | frozenset[str]
) -> list[Finding]:
    """Every series detector on one contractor (or address), then their combination."""
    names = SERIES_DETECTORS if series.who.subject is not None else ADDRESS_DETECTORS
    found: list[Finding] = []
    for name in names:
        if name in wanted:
            found.extend(SERIES_DETECTORS[name](series, peers, ctx))
    if "combined" in wanted:
        found.extend(combined(series, peers, ctx, found))
    return found


def score_vendor(
    vendor: str | None, peers: Peers, ctx: Context, wanted: set[str] | frozenset[str]
) -> list[Finding]:
    return vendor_rise(vendor, peers, ctx) if "vendor_rise" in wanted else []


def new_context(
    config: AnomalyConfig,
    source: LogSource,
    since_hour: int,
    end_hour: int,
    locations: IpLocations | None,
    across: dict[tuple[int, str | None], list[tuple[str, int]]],
) -> Context:
    ctx = Context(config, source, since_hour, end_hour, locations)
    ctx.cache["project_days"] = across
    return ctx


# --- running them ----------------------------------------------------------------------


ALL_DETECTORS = frozenset(SERIES_DETECTORS) | RECORD_DETECTORS | COMBINING_DETECTORS


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
        elif who.key.startswith(VENDOR_PREFIX):
            query["vendor"] = who.vendor or ""
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
    wanted = set(detectors or ALL_DETECTORS)
    findings: list[Finding] = []
    across = project_days(source.daily_reads(start_hour, end_hour))
    ctx = new_context(config, source, since_hour, end_hour, locations_for(config), across)
    vendors = source.vendors(start_hour, end_hour)
    if on_start is not None:
        on_start(sum(count for _, count in vendors))
    for vendor, _ in vendors:
        series = build_series(source.hourly(vendor, start_hour, end_hour))
        peers = Peers(series, config, across)
        for key in sorted(series):
            findings.extend(score_series(series[key], peers, ctx, wanted))
            if progress is not None:
                progress(1)
        findings.extend(score_vendor(vendor, peers, ctx, wanted))
    if "canary_touch" in wanted:
        findings.extend(canary_touches(ctx))
    if "catalogue_mismatch" in wanted:
        findings.extend(catalogue_mismatches(ctx))
    merged = merge(findings)
    attach_evidence(source, merged)
    return merged
