"""What the pipeline asks of the catalogue: where a path's record belongs, and each record's.

A path never places a record by itself saying so: a record the catalogue places elsewhere
is withheld (`catalogue_mismatch`) and logged under the project it really belongs to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.catalogue.store import Placement
from gateway.catalogue.view import CatalogueView
from gateway.context import Denial
from gateway.route_config import RouteConfig
from gateway.routemap import RouteMatch

MISMATCH = "catalogue_mismatch"
UNKNOWN = "catalogue_unknown"


@dataclass(frozen=True)
class Verdict:
    """A record's fate before policy: withheld (`reason`), or where policy should look."""

    reason: str | None
    project: str | None
    task: str | None
    learn: bool = False


class CatalogueGuard:
    def __init__(self, view: CatalogueView | None) -> None:
        self.view = view

    def unknown_records(self, route: RouteConfig, kind: str) -> str:
        if route.unknown_records is not None:
            return route.unknown_records
        assert self.view is not None
        return "refuse" if self.view.holds(kind) else "allow"

    def _active(self, route: RouteConfig, kind: str) -> bool:
        if self.view is None or route.catalogue == "off":
            return False
        if route.project_from == "catalogue" or route.unknown_records in ("refuse", "learn"):
            return True
        return self.view.holds(kind)

    # --- before the upstream is asked ---------------------------------------------------

    def place_path_record(self, match: RouteMatch) -> RouteMatch:
        """The match with its project/task from the catalogue where the route says so.

        Refuses (nothing is forwarded) a record the catalogue places outside the path's
        project or task, and one it does not know when unknown records are refused.
        """
        route = match.route.config
        if match.record is None:
            return match
        kind = route.path_record_kind or route.catalogue_kind
        if not self._active(route, kind):
            return match
        assert self.view is not None
        # A media file's id is its path (its name alone may repeat across projects).
        record_id = match.path if route.media else match.record
        placement = self.view.place(kind, [record_id]).get(record_id)
        if placement is None:
            if route.project_from == "catalogue" or self.unknown_records(route, kind) == "refuse":
                raise Denial(
                    404,
                    "unknown_record",
                    "no such record",
                    reason=UNKNOWN,
                    row_fields={"record_id": record_id},
                )
            return match
        path_task = match.task if match.task != "*" else None
        if (match.project is not None and placement.project != match.project) or (
            path_task is not None and placement.task is not None and placement.task != path_task
        ):
            # Logged where the record really is: the audit trail must not say otherwise.
            raise Denial(
                403,
                "forbidden",
                "not allowed by policy",
                reason=MISMATCH,
                row_fields={
                    "project": placement.project,
                    "task": placement.task,
                    "record_id": record_id,
                },
            )
        changes: dict[str, str] = {}
        if route.project_from == "catalogue":
            changes["project"] = placement.project
        if route.task_from == "catalogue":
            changes["task"] = placement.task or "*"
        return dataclasses.replace(match, **changes) if changes else match

    # --- records in the answer ----------------------------------------------------------

    def placements(
        self, match: RouteMatch, record_ids: Iterable[str]
    ) -> dict[str, Placement] | None:
        """The catalogue's placements of these records, or None when it has no say here."""
        route = match.route.config
        if not self._active(route, route.catalogue_kind):
            return None
        assert self.view is not None
        return self.view.place(route.catalogue_kind, record_ids)

    def verdict(
        self,
        match: RouteMatch,
        placements: dict[str, Placement],
        record_id: str,
        assumed_project: str | None,
        assumed_task: str | None,
    ) -> Verdict:
        route = match.route.config
        placement = placements.get(record_id)
        if placement is None:
            policy = self.unknown_records(route, route.catalogue_kind)
            if policy == "refuse":
                return Verdict(UNKNOWN, assumed_project, assumed_task)
            return Verdict(
                None,
                assumed_project,
                assumed_task,
                learn=policy == "learn" and assumed_project is not None,
            )
        if (assumed_project is not None and placement.project != assumed_project) or (
            assumed_task is not None
            and placement.task is not None
            and placement.task != assumed_task
        ):
            return Verdict(MISMATCH, placement.project, placement.task)
        return Verdict(None, placement.project, placement.task or assumed_task)

    def learn(self, match: RouteMatch, placements: dict[str, Placement]) -> None:
        if placements and self.view is not None:
            self.view.learn(match.route.config.catalogue_kind, placements)
