"""Detectors of single records: canary records touched, records asked for under another
project's path (the record catalogue's mismatches)."""

from __future__ import annotations

import math
from typing import Any

from gateway.anomaly.data import (
    Who,
    contractor_key,
)
from gateway.anomaly.detectors.common import (
    EVIDENCE_ROWS,
    Context,
    Finding,
    day_text,
    iso,
)

DAY = 24 * 3600
# Distinct request paths a catalogue_mismatch explanation names (evidence holds more).
MISMATCH_PATHS_SHOWN = 3


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


def catalogue_mismatches(ctx: Context) -> list[Finding]:
    """One alert per contractor and UTC day with records asked for under a path of another
    project (or task) than the record catalogue places them in: a probe of the dataset
    service's nested-path IDOR. The gateway withheld or refused each such record and
    logged it `catalogue_mismatch` under the project the record really belongs to.

    The rows are read from the start of the UTC day `since` falls in, so a scan window
    that starts mid-day counts that day whole (and a rescan does not shrink its alert);
    a day whose rows all lie before `since` was a previous scan's to raise.
    """
    config = ctx.config
    since_ts = ctx.since_hour * 3600
    first_day = since_ts // DAY
    hits = ctx.source.catalogue_mismatches(first_day * DAY, ctx.end_hour * 3600)
    grouped: dict[tuple[str, int], list[Any]] = {}
    for hit in hits:
        key = contractor_key(hit.issuer, hit.subject, hit.client_ip)
        grouped.setdefault((key, int(hit.ts // DAY)), []).append(hit)
    found = []
    for (key, day), group in sorted(grouped.items()):
        if len(group) < config.catalogue_mismatch_min_rows:
            continue
        group.sort(key=lambda h: (h.ts, h.id))
        first, last = group[0], group[-1]
        if last.ts < since_ts:
            continue
        who = Who(
            key,
            first.issuer,
            first.subject,
            first.vendor,
            first.client_ip if first.subject is None else None,
        )
        requests = list(dict.fromkeys(h.request_id for h in group))
        records = list(dict.fromkeys(h.record_id for h in group if h.record_id))
        projects = sorted({h.project for h in group if h.project})
        paths = list(dict.fromkeys(h.path for h in group))
        refused = sum(1 for h in group if h.decision == "deny")
        shown = ", ".join(_short(path) for path in paths[:MISMATCH_PATHS_SHOWN])
        if len(paths) > MISMATCH_PATHS_SHOWN:
            shown += f" and {len(paths) - MISMATCH_PATHS_SHOWN} more"
        found.append(
            Finding(
                "catalogue_mismatch",
                config.catalogue_mismatch_severity,
                who,
                # Whole seconds around the rows, so the evidence query lists them all.
                math.floor(first.ts),
                math.floor(last.ts) + 1,
                # A periodic scan could raise it once the threshold's row was logged.
                group[config.catalogue_mismatch_min_rows - 1].ts,
                float(len(group)),
                f"{len(records)} record(s) ({len(group)} row(s)) asked for in"
                f" {len(requests)} request(s) under a path of another project or task than"
                f" the record catalogue places them in, between {iso(first.ts)} and"
                f" {iso(last.ts)} ({refused} refused before forwarding,"
                f" {len(group) - refused} withheld from answers); the records belong to"
                f" {', '.join(projects) or 'unknown projects'}; asked for under {shown}:"
                " records sought through another project's path (an IDOR probe)",
                f"catalogue_mismatch:{key}:{day_text(day)}",
                project=projects[0] if len(projects) == 1 else None,
                evidence={
                    "rows": [h.id for h in group[:EVIDENCE_ROWS]],
                    "request_ids": requests[:EVIDENCE_ROWS],
                    "records": records[:EVIDENCE_ROWS],
                    "projects": projects,
                    "paths": [_short(path, 300) for path in paths[:EVIDENCE_ROWS]],
                    "refused": refused,
                    "withheld": len(group) - refused,
                },
            )
        )
    return found


def _short(path: str, limit: int = 120) -> str:
    return path if len(path) <= limit else path[: limit - 3] + "..."
