"""A record body's accounting: where each record belongs, whether it may go, its row.

The pipeline hands over the records it parsed; each gets a `Verdict` (released, or why it
is withheld, and the project/task it is logged under), the access rows follow from them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from gateway.catalogue.guard import CatalogueGuard, Verdict
from gateway.catalogue.store import Placement
from gateway.context import RequestContext
from gateway.identity import Principal
from gateway.lockout import LockHit
from gateway.policy import PolicyEngine
from gateway.records.selection import ExtractedRecord
from gateway.routemap import RouteMatch


class RecordAccounting:
    def __init__(
        self,
        policy: PolicyEngine,
        catalogue: CatalogueGuard,
        lock_hit: Callable[[Principal, str | None], LockHit | None],
    ) -> None:
        self.policy = policy
        self.catalogue = catalogue
        self._lock_hit = lock_hit

    def verdicts(self, ctx: RequestContext, records: list[ExtractedRecord]) -> list[Verdict]:
        """Each record's verdict; records first seen on a trusted listing are learnt."""
        assert ctx.match is not None
        placements = self.catalogue.placements(ctx.match, [r.record_id for r in records])
        # A verdict depends on the record's id only through its placement, so a page of
        # records that all sit where the path says costs one verdict, not one per record.
        known: dict[tuple[Any, ...], Verdict] = {}
        verdicts = []
        for record in records:
            placement = None if placements is None else placements.get(record.record_id)
            key = (record.project, record.task, placement)
            verdict = known.get(key)
            if verdict is None:
                verdict = known[key] = self.verdict(ctx, record, placements)
            verdicts.append(verdict)
        self.learn(ctx.match, verdicts, records)
        return verdicts

    def verdict(
        self,
        ctx: RequestContext,
        record: ExtractedRecord,
        placements: dict[str, Placement] | None,
    ) -> Verdict:
        """Where the record belongs, and why it is withheld (reason None: released)."""
        match, principal = ctx.match, ctx.principal
        assert match is not None and principal is not None
        spec = match.route.records
        route_task = match.task if match.task != "*" else None
        if spec is not None and spec.record_project is not None and record.project is None:
            # The route says records carry their project: one that does not is not
            # assumed to be the path's (and is logged without one).
            return Verdict("record_project_missing", None, record.task or route_task)
        verdict = Verdict(None, record.project or match.project, record.task or route_task)
        if placements is not None:
            verdict = self.catalogue.verdict(
                match, placements, record.record_id, verdict.project, verdict.task
            )
            if verdict.reason is not None:
                return verdict
        project, task = verdict.project, verdict.task or "*"
        if project is None:
            return dataclasses.replace(verdict, reason="record_project_missing")
        if (project, task) in ctx.prechecked:
            return verdict
        if project != match.project:
            hit = self._lock_hit(principal, project)
            if hit is not None:
                return dataclasses.replace(verdict, reason=f"locked:{hit.lock_id}")
        decision = self.policy.decide(
            principal.policy_subject, principal.vendor, project, task, match.route.action
        )
        if ctx.policy_version is None or decision.version > ctx.policy_version:
            ctx.policy_version = decision.version
        if decision.allowed:
            ctx.prechecked.add((project, task))
            return verdict
        return dataclasses.replace(verdict, reason="record_policy_denied")

    def learn(
        self, match: RouteMatch, verdicts: list[Verdict], records: list[ExtractedRecord]
    ) -> None:
        """Records first seen on a listing the route trusts are placed where it lists them."""
        learnt = {
            record.record_id: Placement(verdict.project, verdict.task)
            for record, verdict in zip(records, verdicts, strict=True)
            if verdict.learn and verdict.reason is None and verdict.project is not None
        }
        self.catalogue.learn(match, learnt)

    def write_row(self, ctx: RequestContext, upstream_status: int) -> dict[str, Any]:
        """A write addressed by a record: what was sent to it, by digest and size."""
        assert ctx.written is not None
        sha256, size = ctx.written
        return ctx.row(
            decision="allow",
            reason="written",
            upstream_status=upstream_status,
            record_sha256=sha256,
            bytes=size,
        )

    def rows(
        self,
        ctx: RequestContext,
        records: list[ExtractedRecord],
        verdicts: list[Verdict],
        upstream_status: int,
    ) -> list[dict[str, Any]]:
        # Everything but the record's own facts is shared by the request's rows; each
        # record is logged where its verdict placed it (the catalogue's project, when known).
        base = ctx.row(decision="allow", reason="released", upstream_status=upstream_status)
        return [
            {
                **base,
                "project": verdict.project,
                "task": verdict.task,
                "record_id": record.record_id,
                "record_sha256": record.sha256,
                "bytes": record.size,
            }
            if verdict.reason is None
            else {
                **base,
                "decision": "filtered",
                "reason": verdict.reason,
                "project": verdict.project,
                "task": verdict.task,
                "record_id": record.record_id,
                "record_sha256": record.sha256,
                "bytes": 0,
            }
            for record, verdict in zip(records, verdicts, strict=True)
        ]
