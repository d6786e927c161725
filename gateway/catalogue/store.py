"""The catalogue in the database: placements, kinds and their versions, sync and import runs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from sys import intern
from typing import Any

from sqlalchemy import Engine, delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from gateway.db.models import CatalogueKind, CatalogueRecord

# Ids per IN list: well under SQLite's 32766 parameters and PostgreSQL's 65535.
LOOKUP_CHUNK = 900
# A bulk fill refreshes PostgreSQL's statistics once it has added this many records and
# at least as many as the table held at the last refresh (so log2(n) times in all).
ANALYZE_MIN_GROWTH = 20_000


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the catalogue says a record belongs."""

    project: str
    task: str | None = None


@dataclass
class UpsertCounts:
    added: int = 0
    moved: int = 0
    unchanged: int = 0


def chunks(items: list[str], size: int = LOOKUP_CHUNK) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _insert(connection: Connection) -> Any:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert


class CatalogueStore:
    def __init__(self, db: Engine, upstream: str) -> None:
        self.db = db
        self.upstream = upstream
        self._rows_at_analyze: int | None = None
        self._added_since_analyze = 0

    # --- reads (the serving path asks these on a cache miss) --------------------------

    def lookup(self, kind: str, record_ids: Iterable[str]) -> dict[str, Placement]:
        wanted = sorted(set(record_ids))
        found: dict[str, Placement] = {}
        if not wanted:
            return found
        with self.db.connect() as connection:
            for part in chunks(wanted):
                rows = connection.execute(
                    select(
                        CatalogueRecord.record_id, CatalogueRecord.project, CatalogueRecord.task
                    ).where(
                        CatalogueRecord.upstream == self.upstream,
                        CatalogueRecord.kind == kind,
                        CatalogueRecord.record_id.in_(part),
                    )
                )
                for record_id, project, task in rows:
                    # Interned: a worker's cache holds one copy of each project name.
                    found[record_id] = Placement(intern(project), task)
        return found

    def kinds(self) -> dict[str, int]:
        """kind → version, for every kind this upstream's catalogue holds."""
        with self.db.connect() as connection:
            rows = connection.execute(
                select(CatalogueKind.kind, CatalogueKind.version).where(
                    CatalogueKind.upstream == self.upstream
                )
            )
            return {kind: version for kind, version in rows}

    def kind_sizes(self) -> dict[str, int]:
        with self.db.connect() as connection:
            rows = connection.execute(
                select(CatalogueKind.kind, CatalogueKind.records).where(
                    CatalogueKind.upstream == self.upstream
                )
            )
            return {kind: records for kind, records in rows}

    def project_sizes(
        self, projects: Iterable[str] | None = None, *, by_task: bool = False
    ) -> dict[tuple[str, str | None], int]:
        """Records per project (and task): the denominators of exposure reports."""
        columns = [CatalogueRecord.project]
        if by_task:
            columns.append(CatalogueRecord.task)
        query = select(*columns, func.count()).where(CatalogueRecord.upstream == self.upstream)
        if projects is not None:
            query = query.where(CatalogueRecord.project.in_(sorted(set(projects))))
        query = query.group_by(*columns)
        with self.db.connect() as connection:
            return {
                (row[0], row[1] if by_task else None): row[-1] for row in connection.execute(query)
            }

    # --- learning (serving path, first sight of a record on a trusted listing) --------

    def learn(self, kind: str, placements: Mapping[str, Placement]) -> None:
        """Add records not yet known; a record already placed is never moved by learning."""
        if not placements:
            return
        now = datetime.now(UTC)
        with self.db.begin() as connection:
            insert = _insert(connection)
            connection.execute(
                insert(CatalogueKind)
                .values(upstream=self.upstream, kind=kind, version=0, records=0, updated_at=now)
                .on_conflict_do_nothing()
            )
            connection.execute(
                insert(CatalogueRecord).on_conflict_do_nothing(),
                [
                    {
                        "upstream": self.upstream,
                        "kind": kind,
                        "record_id": record_id,
                        "project": placement.project,
                        "task": placement.task,
                        "source": "learn",
                        "updated_at": now,
                    }
                    for record_id, placement in placements.items()
                ],
            )

    # --- sync and import (admin commands, as the owner) -------------------------------

    def upsert(
        self,
        connection: Connection,
        kind: str,
        placements: Mapping[str, Placement],
        *,
        source: str,
        run_id: int | None,
    ) -> UpsertCounts:
        """Place records as given: new ones added, moved ones moved, all marked seen."""
        counts = UpsertCounts()
        if not placements:
            return counts
        now = datetime.now(UTC)
        ids = list(placements)
        existing: dict[str, Placement] = {}
        for part in chunks(ids):
            for record_id, project, task in connection.execute(
                select(
                    CatalogueRecord.record_id, CatalogueRecord.project, CatalogueRecord.task
                ).where(
                    CatalogueRecord.upstream == self.upstream,
                    CatalogueRecord.kind == kind,
                    CatalogueRecord.record_id.in_(part),
                )
            ):
                existing[record_id] = Placement(project, task)
        new_rows = []
        moved: list[tuple[str, Placement]] = []
        unchanged: list[str] = []
        for record_id, placement in placements.items():
            before = existing.get(record_id)
            if before is None:
                new_rows.append(
                    {
                        "upstream": self.upstream,
                        "kind": kind,
                        "record_id": record_id,
                        "project": placement.project,
                        "task": placement.task,
                        "source": source,
                        "updated_at": now,
                        "seen_run": run_id,
                    }
                )
            elif before != placement:
                moved.append((record_id, placement))
            else:
                unchanged.append(record_id)
        if new_rows:
            connection.execute(
                _insert(connection)(CatalogueKind)
                .values(upstream=self.upstream, kind=kind, version=0, records=0, updated_at=now)
                .on_conflict_do_nothing()
            )
            connection.execute(_insert(connection)(CatalogueRecord), new_rows)
            self._keep_statistics(connection, len(new_rows))
        for record_id, placement in moved:
            connection.execute(
                update(CatalogueRecord)
                .where(
                    CatalogueRecord.upstream == self.upstream,
                    CatalogueRecord.kind == kind,
                    CatalogueRecord.record_id == record_id,
                )
                .values(
                    project=placement.project,
                    task=placement.task,
                    source=source,
                    updated_at=now,
                    seen_run=run_id,
                )
            )
        if run_id is not None:
            for part in chunks(unchanged):
                connection.execute(
                    update(CatalogueRecord)
                    .where(
                        CatalogueRecord.upstream == self.upstream,
                        CatalogueRecord.kind == kind,
                        CatalogueRecord.record_id.in_(part),
                    )
                    .values(seen_run=run_id)
                )
        counts.added, counts.moved, counts.unchanged = len(new_rows), len(moved), len(unchanged)
        if moved:
            self.bump(connection, kind)
        return counts

    def _keep_statistics(self, connection: Connection, added: int) -> None:
        """A bulk fill outruns PostgreSQL's statistics, the more so where autovacuum is off
        or slow: planning for a table it believes nearly empty, the server answers a
        lookup by record id from the (upstream, kind) prefix of the index alone and
        filters every record of the kind, so each batch costs more than the last (seen:
        330 records/s at 120k records). ANALYZE after each doubling keeps lookups on the
        whole index. Without ownership of the table the server skips it with a warning."""
        if connection.dialect.name != "postgresql":
            return
        if self._rows_at_analyze is None:
            estimate = connection.execute(
                text("SELECT reltuples FROM pg_class WHERE relname = 'catalogue_records'")
            ).scalar()
            self._rows_at_analyze = max(int(estimate or 0), 0)
        self._added_since_analyze += added
        if self._added_since_analyze >= max(ANALYZE_MIN_GROWTH, self._rows_at_analyze):
            connection.execute(text("ANALYZE catalogue_records"))
            self._rows_at_analyze += self._added_since_analyze
            self._added_since_analyze = 0

    def delete_unseen(self, connection: Connection, kind: str, project: str, run_id: int) -> int:
        """After a complete walk of one project's listing: what it did not list is gone."""
        result = connection.execute(
            delete(CatalogueRecord).where(
                CatalogueRecord.upstream == self.upstream,
                CatalogueRecord.kind == kind,
                CatalogueRecord.project == project,
                (CatalogueRecord.seen_run.is_(None)) | (CatalogueRecord.seen_run != run_id),
            )
        )
        gone = result.rowcount or 0
        if gone:
            self.bump(connection, kind)
        return gone

    def bump(self, connection: Connection, kind: str) -> None:
        """A new version of the kind: every worker drops its cached placements of it."""
        now = datetime.now(UTC)
        connection.execute(
            _insert(connection)(CatalogueKind)
            .values(upstream=self.upstream, kind=kind, version=1, records=0, updated_at=now)
            .on_conflict_do_update(
                index_elements=["upstream", "kind"],
                set_={"version": CatalogueKind.version + 1, "updated_at": now},
            )
        )

    def recount(self, connection: Connection, kind: str) -> int:
        total = connection.execute(
            select(func.count()).where(
                CatalogueRecord.upstream == self.upstream, CatalogueRecord.kind == kind
            )
        ).scalar_one()
        now = datetime.now(UTC)
        connection.execute(
            _insert(connection)(CatalogueKind)
            .values(upstream=self.upstream, kind=kind, version=0, records=total, updated_at=now)
            .on_conflict_do_update(
                index_elements=["upstream", "kind"],
                set_={"records": total, "updated_at": now},
            )
        )
        return total
