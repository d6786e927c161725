"""Detectors of single records: canary records touched, records asked for under another
project's path (the record catalogue's mismatches)."""

from __future__ import annotations

from typing import Any

from gateway.anomaly.data import (
    Who,
    contractor_key,
)
from gateway.anomaly.detectors.common import (
    EVIDENCE_ROWS,
    Context,
    Finding,
    iso,
)

DAY = 24 * 3600


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
    """One alert per contractor and UTC day with records asked for under another
    project's path: a probe of the dataset service's nested-path IDOR."""
    config = ctx.config
    hits = ctx.source.catalogue_mismatches(ctx.since_hour * 3600, ctx.end_hour * 3600)
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
        found.append(
            Finding(
                "catalogue_mismatch",
                config.catalogue_mismatch_severity,
                who,
                day * DAY,
                (day + 1) * DAY,
                last.ts,
                float(len(group)),
                f"{len(records)} record(s) asked for under another project's path in"
                f" {len(requests)} request(s) between {iso(first.ts)} and {iso(last.ts)}"
                f" ({refused} refused before the dataset service, {len(group) - refused}"
                f" withheld from answers); they belong to {', '.join(projects) or 'unknown'}"
                f"; paths such as {', '.join(paths[:3])}: probing for records of projects"
                " not granted",
                f"catalogue_mismatch:{key}:{day}",
                project=projects[0] if len(projects) == 1 else None,
                evidence={
                    "rows": [h.id for h in group[:EVIDENCE_ROWS]],
                    "request_ids": requests[:EVIDENCE_ROWS],
                    "records": records[:EVIDENCE_ROWS],
                    "projects": projects,
                },
            )
        )
    return found
