"""The `audit_archives` table: which partitions were archived, where, and their manifests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, inspect, select

from gateway.archive.manifest import ArchiveManifest, SignedManifest
from gateway.db.models import AuditArchive
from gateway.db.times import time_param
from gateway.timestamps import parse_rfc3339_micro as parse
from gateway.timestamps import utc

# Databases known to have the catalogue (migration 0012), so readers ask only once.
_HAS_TABLE: set[str] = set()


@dataclass(frozen=True)
class ArchiveEntry:
    id: int
    name: str
    created_at: datetime
    time_from: datetime
    time_to: datetime
    rows: int
    file_key: str
    file_sha256: str
    file_bytes: int
    manifest_key: str
    signed: SignedManifest

    @property
    def manifest(self) -> ArchiveManifest:
        return self.signed.manifest


def _entry(row: Any) -> ArchiveEntry:
    signed = SignedManifest(
        ArchiveManifest.from_payload(row.manifest), row.manifest, row.kid, row.signature
    )
    return ArchiveEntry(
        id=row.id,
        name=row.name,
        created_at=utc(row.created_at),
        time_from=utc(row.time_from),
        time_to=utc(row.time_to),
        rows=row.rows,
        file_key=row.file_key,
        file_sha256=row.file_sha256,
        file_bytes=row.file_bytes,
        manifest_key=row.manifest_key,
        signed=signed,
    )


def entries(
    db: Engine | Connection, since: datetime | None = None, until: datetime | None = None
) -> list[ArchiveEntry]:
    """The archives whose time range overlaps [since, until), oldest first."""
    dialect = db.dialect.name
    query = select(AuditArchive.__table__).order_by(AuditArchive.time_from, AuditArchive.id)
    if since is not None:
        query = query.where(AuditArchive.time_to > time_param(since, dialect))
    if until is not None:
        query = query.where(AuditArchive.time_from < time_param(until, dialect))

    def read(connection: Connection) -> list[ArchiveEntry]:
        where = connection.engine.url.render_as_string(hide_password=True)
        if where not in _HAS_TABLE:
            if not inspect(connection).has_table(AuditArchive.__tablename__):
                return []  # a database before migration 0012 has archived nothing
            _HAS_TABLE.add(where)
        return [_entry(row) for row in connection.execute(query)]

    if isinstance(db, Connection):
        return read(db)
    with db.connect() as connection:
        return read(connection)


def add_entry(connection: Connection, signed: SignedManifest, manifest_key: str) -> int:
    manifest = signed.manifest
    result = connection.execute(
        insert(AuditArchive)
        .values(
            name=manifest.name,
            created_at=parse(manifest.created_at),
            time_from=parse(manifest.time_from),
            time_to=parse(manifest.time_to),
            rows=manifest.rows,
            file_key=manifest.file_key,
            file_sha256=manifest.file_sha256,
            file_bytes=manifest.file_bytes,
            manifest_key=manifest_key,
            manifest=signed.payload,
            kid=signed.kid,
            signature=signed.signature,
        )
        .returning(AuditArchive.id)
    )
    return int(result.scalar_one())
