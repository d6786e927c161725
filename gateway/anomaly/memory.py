"""The detectors' data from requests held in memory: the simulators' logs (evaluation,
tests) read exactly as the database's rollup would give them."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from gateway.anomaly.data import (
    CATALOGUE_MISMATCH,
    CanaryHit,
    DetailRow,
    HourlyRow,
    MismatchHit,
    PolicyGrant,
    Request,
    Who,
    classify,
    contractor_key,
)


class MemorySource:
    """A LogSource over requests held in memory (the simulator's output).

    Row ids are assigned in time order, one per record, starting at 1: the same ids the
    rows get when the simulator writes them to an empty database.
    """

    def __init__(
        self,
        requests: Iterable[Request],
        canaries: Iterable[str] = (),
        grants: Iterable[PolicyGrant] = (),
    ) -> None:
        self.requests = sorted(requests, key=lambda r: (r.ts, r.request_id))
        self.grants = sorted(grants)
        self.first_ids: list[int] = []
        next_id = 1
        for request in self.requests:
            self.first_ids.append(next_id)
            next_id += len(request.record_ids)
        self.canaries = frozenset(canaries)
        self._by_who: dict[str, list[int]] = defaultdict(list)
        for index, request in enumerate(self.requests):
            self._by_who[contractor_key(request.issuer, request.subject, request.client_ip)].append(
                index
            )
        self._hourly: dict[str | None, list[HourlyRow]] | None = None

    def _aggregate(self) -> dict[str | None, list[HourlyRow]]:
        if self._hourly is None:
            groups: dict[tuple[Any, ...], list[Any]] = {}
            for request, first_id in zip(self.requests, self.first_ids, strict=True):
                hour = int(request.ts // 3600)
                # One request's rows share everything but the record id, so one kind
                # unless record ids are missing on some rows (never, in the simulator).
                kinds: dict[str, int] = {}
                for record_id in request.record_ids:
                    kind = classify(request.decision, request.reason, request.action, record_id)
                    kinds[kind] = kinds.get(kind, 0) + 1
                last_id = first_id + len(request.record_ids) - 1
                for kind, count in kinds.items():
                    lock_reason = (request.reason or "") if kind == "locked" else ""
                    key = (
                        request.vendor,
                        hour,
                        request.issuer,
                        request.subject,
                        request.client_ip,
                        request.project,
                        request.task,
                        kind,
                        lock_reason,
                    )
                    group = groups.get(key)
                    if group is None:
                        groups[key] = [count, 1, request.ts, request.ts, first_id, last_id]
                    else:
                        group[0] += count
                        group[1] += 1
                        group[3] = request.ts
                        group[5] = last_id
            by_vendor: dict[str | None, list[HourlyRow]] = defaultdict(list)
            for key, (rows, requests, first_ts, last_ts, first_id, last_id) in groups.items():
                vendor, hour, issuer, subject, ip, project, task, kind, lock_reason = key
                by_vendor[vendor].append(
                    HourlyRow(
                        hour,
                        issuer,
                        subject,
                        vendor,
                        ip,
                        project,
                        task,
                        kind,
                        lock_reason,
                        rows,
                        requests,
                        first_ts,
                        last_ts,
                        first_id,
                        last_id,
                    )
                )
            self._hourly = dict(by_vendor)
        return self._hourly

    def vendors(self, start_hour: int, end_hour: int) -> list[tuple[str | None, int]]:
        result = []
        for vendor, rows in self._aggregate().items():
            keys = {
                contractor_key(r.issuer, r.subject, r.client_ip)
                for r in rows
                if start_hour <= r.hour < end_hour
            }
            if keys:
                result.append((vendor, len(keys)))
        return sorted(result, key=lambda item: item[0] or "")

    def hourly(self, vendor: str | None, start_hour: int, end_hour: int) -> Iterator[HourlyRow]:
        for row in self._aggregate().get(vendor, []):
            if start_hour <= row.hour < end_hour:
                yield row

    def daily_reads(
        self, start_hour: int, end_hour: int
    ) -> Iterator[tuple[int, str, str | None, int]]:
        for rows in self._aggregate().values():
            for row in rows:
                if (
                    row.kind == "read"
                    and row.subject is not None
                    and start_hour <= row.hour < end_hour
                ):
                    yield row.hour // 24, f"{row.issuer}:{row.subject}", row.project, row.rows

    def detail(
        self, who: Who, start_ts: float, end_ts: float, kinds: Sequence[str], limit: int
    ) -> list[DetailRow]:
        indexes = self._by_who.get(who.key, [])
        times = [self.requests[i].ts for i in indexes]
        lo = bisect.bisect_left(times, start_ts)
        hi = bisect.bisect_left(times, end_ts)
        wanted = set(kinds)
        out: list[DetailRow] = []
        for index in indexes[lo:hi]:
            request = self.requests[index]
            for offset, record_id in enumerate(request.record_ids):
                kind = classify(request.decision, request.reason, request.action, record_id)
                if kind in wanted:
                    out.append(
                        DetailRow(
                            self.first_ids[index] + offset,
                            request.ts,
                            request.request_id,
                            record_id,
                            request.path,
                            request.reason,
                            request.client_ip,
                        )
                    )
                    if len(out) >= limit:
                        return out
        return out

    def policy_grants(self, start_ts: float, end_ts: float) -> list[PolicyGrant]:
        return [grant for grant in self.grants if start_ts <= grant.ts < end_ts]

    def canary_hits(self, start_ts: float, end_ts: float) -> list[CanaryHit]:
        if not self.canaries:
            return []
        times = [request.ts for request in self.requests]
        lo = bisect.bisect_left(times, start_ts)
        hi = bisect.bisect_left(times, end_ts)
        hits = []
        for index in range(lo, hi):
            request = self.requests[index]
            for offset, record_id in enumerate(request.record_ids):
                if record_id is not None and record_id in self.canaries:
                    hits.append(
                        CanaryHit(
                            self.first_ids[index] + offset,
                            request.ts,
                            request.request_id,
                            request.issuer,
                            request.subject,
                            request.vendor,
                            request.client_ip,
                            record_id,
                            request.decision,
                            request.project,
                        )
                    )
        return hits

    def catalogue_mismatches(self, start_ts: float, end_ts: float) -> list[MismatchHit]:
        times = [request.ts for request in self.requests]
        hits = []
        for index in range(bisect.bisect_left(times, start_ts), bisect.bisect_left(times, end_ts)):
            request = self.requests[index]
            if request.reason != CATALOGUE_MISMATCH:
                continue
            for offset, record_id in enumerate(request.record_ids):
                hits.append(
                    MismatchHit(
                        self.first_ids[index] + offset,
                        request.ts,
                        request.request_id,
                        request.issuer,
                        request.subject,
                        request.vendor,
                        request.client_ip,
                        record_id,
                        request.decision,
                        request.project,
                        request.path,
                    )
                )
        return hits

    def rows(self) -> Iterator[dict[str, Any]]:
        """The access-log rows these requests leave, in id order (for writing them out)."""
        for request, first_id in zip(self.requests, self.first_ids, strict=True):
            for offset, record_id in enumerate(request.record_ids):
                yield {
                    "id": first_id + offset,
                    "ts": request.ts,
                    "request_id": request.request_id,
                    "issuer": request.issuer,
                    "subject": request.subject,
                    "vendor": request.vendor,
                    "client_ip": request.client_ip,
                    "user_agent": request.user_agent,
                    "method": request.method,
                    "path": request.path,
                    "project": request.project,
                    "task": request.task,
                    "record_id": record_id,
                    "action": request.action,
                    "decision": request.decision,
                    "reason": request.reason,
                    "upstream_status": request.upstream_status,
                }
